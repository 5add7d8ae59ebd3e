"""Peer side of the whole-study benchmark: a study's runs trained in its original framework.

benchmarks/study.py runs a study in labjax and, in a subprocess, this script on the same
plan, and compares their wall times:

    python benchmarks/study_peers.py PLAN.json

PLAN.json (written by study.py) names the framework ("torch": S4's PyTorch eager loop;
"keras": Keras 3 on TensorFlow, S2 and S0) and the runs, each with its model, data (an .npz
of x_train, y_train, x_val, y_val, already normalised and balanced), epochs, batches,
optimizer, L2 penalty, flip augmentation, early stopping and seed. The runs are trained one
after another in this one process, as a plain user of the framework would write it, each
validated every epoch, and saved under out/NAME/ (weights, history.json, curves.png).
The last stdout line is one JSON object: framework, wall_s (from this file's first line to
the end, imports included) and per run name, params, epochs_run, final metrics and train_s.
Models have labjax's architectures and parameter counts (a mismatch with expected_params
raises); progress goes to stderr, one line per run.
"""

import time

_START = time.perf_counter()  # wall_s counts the imports too, as a user's script pays them

import ast  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

os.environ["KERAS_BACKEND"] = "tensorflow"  # the S0/S2 originals' backend; read when keras is imported
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep stderr to one line per run
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for benchmarks.keras_unet

# labjax/models/small_nets.py S2_PRESETS, copied so this peer does not import labjax (and JAX).
S2_PRESETS = {
    "arch4": "conv(32,3,relu)|batchnorm|maxpool(2)|dropout(0.25)|conv(64,3,relu)|batchnorm|maxpool(2)|dropout(0.25)"
    "|flatten|dense(128,relu)|dropout(0.5)|dense(classes)",
    "arch5": "conv(32,3,relu,padding=same)|maxpool(2)|conv(64,3,relu,padding=same)|maxpool(2)"
    "|conv(128,3,relu,padding=same)|maxpool(2)|flatten|dropout(0.3)|dense(128,relu)|dropout(0.3)|dense(classes)",
    "arch10": "conv(32,3,relu)|maxpool(2)|conv(64,3,relu)|avgpool(2)|conv(128,3,relu)|flatten|dropout(0.2)"
    "|dense(64,relu)|dense(classes)",
    "proposed": "conv(32,3,relu,padding=same)|batchnorm|conv(32,3,relu,padding=same)|batchnorm|maxpool(2)|dropout(0.25)"
    "|conv(64,3,relu,padding=same)|batchnorm|conv(64,3,relu,padding=same)|batchnorm|maxpool(2)|dropout(0.25)"
    "|conv(128,3,relu,padding=same)|batchnorm|globalavgpool|dropout(0.4)|dense(64,relu)|dropout(0.3)|dense(classes)",
}
# labjax's SmallCNN is arch10 with the run's dropout rate in place of 0.2.
SMALL_CNN = S2_PRESETS["arch10"].replace("dropout(0.2)", "dropout({rate})")
# ConvNN_1 / ConvNN_2 of S4: first conv's (H, W) padding, first pool size, hidden units.
CONVNN = {"convnn1": ((2, 1), 2, 40), "convnn2": ((1, 0), 3, 32)}


def check_params(run: dict, counts: dict[str, int]) -> None:
    """Raises unless expected_params equals one of the peer's counts.

    labjax's own count (train.count_params) is of its `params` only, Keras' count_params also
    holds BatchNorm's moving statistics; either convention is accepted, both are reported.
    """
    expected = run.get("expected_params")
    if expected is not None and expected not in counts.values():
        raise ValueError(f"{run['name']}: labjax has {expected:,} parameters, the peer {counts}")


def final_metrics(history: dict, epoch: int, task: str) -> dict:
    keys = ["val_loss", "val_accuracy"] + (["val_miou"] if task == "segmentation" else [])
    return {key: float(history[key][epoch]) for key in keys}


def save_history_and_curves(out_dir: Path, history: dict) -> None:
    """history.json and a loss / accuracy figure, as a user keeps them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (out_dir / "history.json").write_text(json.dumps(history, indent=1))
    epochs = range(1, len(history["loss"]) + 1)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("loss", "val_loss"):
        left.plot(epochs, history[key], marker=".", label=key)
    for key in ("accuracy", "val_accuracy", "val_miou"):
        if key in history:
            right.plot(epochs, history[key], marker=".", label=key)
    for axes, title in ((left, "loss"), (right, "accuracy")):
        axes.set_xlabel("epoch")
        axes.set_title(title)
        axes.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "curves.png")
    plt.close(fig)


# ---------------------------------------------------------------- PyTorch (S4)


def torch_convnn(model_cfg: dict, num_classes: int, shape: tuple[int, int, int]):
    """S4's ConvNN_1/ConvNN_2 as the study wrote them: Conv2d MaxPool ReLU Conv2d MaxPool ReLU
    Flatten Linear ReLU [Dropout] Linear (labjax.models.small_nets.ConvNN)."""
    from torch import nn

    if model_cfg["name"] not in CONVNN:
        raise ValueError(f"torch peer: model {model_cfg['name']!r} unknown; valid: {sorted(CONVNN)}")
    (ph, pw), pool, hidden = CONVNN[model_cfg["name"]]
    h, w, c = shape
    side_h, side_w = ((h + 2 * ph - 2) // pool - 2) // 2, ((w + 2 * pw - 2) // pool - 2) // 2
    layers = [
        nn.Conv2d(c, 8, 3, padding=(ph, pw)),
        nn.MaxPool2d(pool),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3),
        nn.MaxPool2d(2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * side_h * side_w, hidden),
        nn.ReLU(),
    ]
    if model_cfg.get("dropout", 0) > 0:
        layers.append(nn.Dropout(model_cfg["dropout"]))
    layers.append(nn.Linear(hidden, num_classes))
    return nn.Sequential(*layers)


def torch_optimizer(opt: dict, params):
    import torch

    name, lr = opt["name"], opt["learning_rate"]
    betas = (opt.get("b1", 0.9), opt.get("b2", 0.999))
    if name == "adam":
        return torch.optim.Adam(params, lr, betas=betas, eps=opt.get("eps", 1e-8))
    if name == "adamax":
        return torch.optim.Adamax(params, lr, betas=betas, eps=opt.get("eps", 1e-8))
    if name == "sgd":
        return torch.optim.SGD(params, lr, momentum=opt.get("momentum", 0.0))
    raise ValueError(f"optimizer {name!r}: adam, adamax or sgd")


def torch_train_epoch(model, loader, optimizer, l2: float, flip: bool, generator) -> tuple[float, float]:
    """One epoch of the usual loop; (mean training loss, accuracy)."""
    import torch
    import torch.nn.functional as F

    kernels = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    for xb, yb in loader:
        if flip:  # each image left-right with probability 0.5
            mask = torch.rand(len(xb), generator=generator) < 0.5
            xb = torch.where(mask[:, None, None, None], xb.flip(-1), xb)
        optimizer.zero_grad()
        logits = model(xb)
        loss = F.cross_entropy(logits, yb)
        if l2:  # Keras' L2 regularizer: l2 * sum(w^2) over the kernels, biases not
            loss = loss + l2 * sum((w**2).sum() for w in kernels)
        loss.backward()
        optimizer.step()
        loss_sum += loss.item() * len(xb)
        correct += (logits.argmax(1) == yb).sum().item()
        seen += len(xb)
    return loss_sum / seen, correct / seen


def torch_evaluate(model, x, y, batch_size: int) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over the whole validation set in eval mode."""
    import torch
    import torch.nn.functional as F

    model.eval()
    loss_sum, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            logits = model(x[start : start + batch_size])
            yb = y[start : start + batch_size]
            loss_sum += F.cross_entropy(logits, yb, reduction="sum").item()
            correct += (logits.argmax(1) == yb).sum().item()
    return loss_sum / len(x), correct / len(x)


class TorchEarlyStopping:
    """Keras' EarlyStopping(monitor, patience, restore_best_weights) by hand: the best epoch's
    state is kept and, with restore_best, loaded at the end of training (Keras 3 does so too)."""

    def __init__(self, cfg: dict):
        self.monitor, self.patience = cfg.get("monitor", "val_loss"), cfg.get("patience", 0)
        self.restore = cfg.get("restore_best", True)
        self.sign = 1.0 if cfg.get("mode", "min" if "loss" in self.monitor else "max") == "min" else -1.0
        self.best, self.best_epoch, self.best_state, self.wait = float("inf"), 0, None, 0

    def stop(self, epoch: int, history: dict, model) -> bool:
        value = self.sign * history[self.monitor][-1]
        self.wait += 1
        if value < self.best:
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore:
                self.best_state = copy.deepcopy(model.state_dict())
            return False
        return self.wait >= self.patience and epoch > 0


def torch_run(run: dict, data: dict, out_dir: Path) -> dict:
    """Trains one run with a TensorDataset + DataLoader(shuffle=True) and saves it as a torch user does."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    if run["task"] != "classification":
        raise ValueError(f"{run['name']}: the torch peer trains classification only")
    torch.manual_seed(run["seed"])
    # NHWC -> NCHW once per run.
    x_train, x_val = (torch.from_numpy(data[k]).permute(0, 3, 1, 2).contiguous() for k in ("x_train", "x_val"))
    y_train, y_val = (torch.from_numpy(data[k]).long() for k in ("y_train", "y_val"))
    model = torch_convnn(run["model"], run["num_classes"], data["x_train"].shape[1:])
    check_params(run, {"params": sum(p.numel() for p in model.parameters())})
    optimizer = torch_optimizer(run["optimizer"], model.parameters())
    generator = torch.Generator().manual_seed(run["seed"])
    loader = DataLoader(
        TensorDataset(x_train, y_train), batch_size=run["batch_size"], shuffle=True, generator=generator
    )
    stopper = TorchEarlyStopping(run["early_stopping"]) if run.get("early_stopping") else None
    history = {"loss": [], "accuracy": [], "val_loss": [], "val_accuracy": []}
    start = time.perf_counter()
    for epoch in range(run["epochs"]):
        flip = run.get("augment_flip_lr", False)
        loss, accuracy = torch_train_epoch(model, loader, optimizer, run.get("l2", 0.0), flip, generator)
        val_loss, val_accuracy = torch_evaluate(model, x_val, y_val, run["eval_batch_size"])
        for key, value in zip(history, (loss, accuracy, val_loss, val_accuracy)):
            history[key].append(value)
        if stopper and stopper.stop(epoch, history, model):
            break
    last = len(history["loss"]) - 1
    if stopper and stopper.best_state is not None:
        model.load_state_dict(stopper.best_state)
        last = stopper.best_epoch
    train_s = time.perf_counter() - start
    torch.save(model.state_dict(), out_dir / "model.pt")
    save_history_and_curves(out_dir, history)
    params = sum(p.numel() for p in model.parameters())
    return _result(run, params, history, last, train_s)


def _result(run: dict, params: int, history: dict, final_epoch: int, train_s: float) -> dict:
    return {
        "name": run["name"],
        "params": int(params),
        "epochs_run": len(history["loss"]),
        "final": final_metrics(history, final_epoch, run["task"]),
        "train_s": train_s,
    }


# ---------------------------------------------------------------- Keras 3 on TensorFlow (S2, S0)


def parse_spec(spec: str) -> list[tuple[str, list, dict]]:
    """'conv(32,3,relu)|maxpool(2)|...' -> [(op, args, kwargs)]; bare names are strings."""

    def value(node):
        return node.id if isinstance(node, ast.Name) else ast.literal_eval(node)

    ops = []
    for piece in spec.split("|"):
        node = ast.parse(piece.strip(), mode="eval").body
        call = node if isinstance(node, ast.Call) else None
        name = (call.func if call else node).id
        args = [value(a) for a in call.args] if call else []
        kwargs = {k.arg: value(k.value) for k in call.keywords} if call else {}
        ops.append((name, args, kwargs))
    return ops


def keras_spec_cnn(spec: str, num_classes: int, shape, dropout: float, l2: float):
    """labjax's SpecCNN as a Keras Sequential: 'valid' padding unless padding=same, glorot kernels,
    BatchNormalization(momentum 0.99 unless the spec gives one, epsilon 1e-3); dropout > 0
    replaces every dropout op's rate."""
    import keras

    layers, reg = keras.layers, keras.regularizers.L2(l2) if l2 else None
    make = {
        "conv": lambda filters, kernel, activation=None, stride=1, padding="valid": layers.Conv2D(
            filters, kernel, strides=stride, padding=padding, activation=activation, kernel_regularizer=reg
        ),
        "maxpool": lambda size, stride=None, padding="valid": layers.MaxPooling2D(size, stride, padding),
        "avgpool": lambda size, stride=None, padding="valid": layers.AveragePooling2D(size, stride, padding),
        "globalavgpool": layers.GlobalAveragePooling2D,
        "globalmaxpool": layers.GlobalMaxPooling2D,
        "batchnorm": lambda momentum=None, epsilon=1e-3: layers.BatchNormalization(
            momentum=0.99 if momentum is None else momentum, epsilon=epsilon
        ),
        "dropout": lambda rate: layers.Dropout(dropout or rate),
        "flatten": layers.Flatten,
        "dense": lambda units, activation=None: layers.Dense(
            num_classes if units == "classes" else units, activation=activation, kernel_regularizer=reg
        ),
    }
    ops = parse_spec(S2_PRESETS.get(spec, spec))
    return keras.Sequential([keras.Input(shape)] + [make[op](*args, **kwargs) for op, args, kwargs in ops])


def _all_layers(model):
    """Every layer, nested models' (the U-Net's down_stack and upsample blocks) included."""
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


def keras_unet(model_cfg: dict, num_classes: int, shape, l2: float):
    """benchmarks/keras_unet.py's tutorial U-Net, BatchNorm momentum and L2 set after building."""
    import keras

    from benchmarks.keras_unet import build_keras_unet

    if shape[0] != shape[1]:
        raise ValueError(f"mobilenetv2_unet peer: square images only (build_keras_unet), got {shape}")
    model = build_keras_unet(
        shape[0], num_classes, alpha=model_cfg.get("alpha", 1.0), dropout=model_cfg.get("dropout", 0)
    )
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization) and "bn_momentum" in model_cfg:
            # MobileNetV2's 0.999 and the decoder's 0.99 replaced, as labjax's bn_momentum does;
            # Keras reads the attribute when fit traces the step.
            layer.momentum = float(model_cfg["bn_momentum"])
        kernels = [getattr(layer, name, None) for name in ("kernel", "depthwise_kernel")]
        for kernel in (k for k in kernels if l2 and k is not None):  # Conv2D(Transpose), DepthwiseConv2D
            kernel.regularizer = keras.regularizers.L2(l2)
    return model


def keras_model(run: dict, shape):
    cfg, l2, classes = run["model"], run.get("l2", 0.0), run["num_classes"]
    if cfg["name"] == "spec_cnn":
        return keras_spec_cnn(cfg.get("layers") or "arch10", classes, shape, cfg.get("dropout", 0.0), l2)
    if cfg["name"] == "small_cnn":
        return keras_spec_cnn(SMALL_CNN.format(rate=cfg.get("dropout", 0.2)), classes, shape, 0.0, l2)
    if cfg["name"] == "mobilenetv2_unet":
        return keras_unet(cfg, classes, shape, l2)
    raise ValueError(f"keras peer: model {cfg['name']!r}: spec_cnn, small_cnn or mobilenetv2_unet")


def keras_optimizer(opt: dict):
    import keras

    name, lr = opt["name"], opt["learning_rate"]
    betas = {"beta_1": opt.get("b1", 0.9), "beta_2": opt.get("b2", 0.999)}
    if name == "adam":  # the plan's eps: Keras' default 1e-7 is not PyTorch's / labjax's 1e-8
        return keras.optimizers.Adam(lr, **betas, epsilon=opt.get("eps", 1e-8))
    if name == "adamax":
        return keras.optimizers.Adamax(lr, **betas, epsilon=opt.get("eps", 1e-8))
    if name == "sgd":
        return keras.optimizers.SGD(lr, momentum=opt.get("momentum", 0.0))
    raise ValueError(f"optimizer {name!r}: adam, adamax or sgd")


def keras_counts(model) -> dict[str, int]:
    """count_params (moving statistics included) and the count without BatchNorm's moving statistics."""
    import keras

    stats = sum(
        int(np.prod(v.shape))
        for layer in _all_layers(model)
        if isinstance(layer, keras.layers.BatchNormalization)
        for v in (layer.moving_mean, layer.moving_variance)
    )
    total = int(model.count_params())
    return {"params": total, "params_without_bn_stats": total - stats}


def flip_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, segmentation: bool):
    """tf.data: shuffle each epoch, batch, flip each image (and its mask) left-right with probability 0.5."""
    import tensorflow as tf

    def flip(images, labels):
        mask = tf.random.uniform([tf.shape(images)[0]]) < 0.5
        images = tf.where(mask[:, None, None, None], tf.reverse(images, [2]), images)
        if segmentation:
            labels = tf.where(mask[:, None, None], tf.reverse(labels, [2]), labels)
        return images, labels

    dataset = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).map(flip, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def keras_run(run: dict, data: dict, out_dir: Path) -> dict:
    """Trains one run with compile + fit (jit_compile 'auto') and saves it as a Keras user does."""
    import keras

    keras.utils.set_random_seed(run["seed"])
    segmentation = run["task"] == "segmentation"
    model = keras_model(run, data["x_train"].shape[1:])
    counts = keras_counts(model)
    check_params(run, counts)
    metrics = ["accuracy"]
    if segmentation:
        metrics.append(keras.metrics.MeanIoU(run["num_classes"], sparse_y_pred=False, name="miou"))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=keras_optimizer(run["optimizer"]), loss=loss, metrics=metrics)
    callbacks, stopping = [], run.get("early_stopping")
    if stopping:
        monitor = stopping.get("monitor", "val_loss")
        mode = stopping.get("mode", "min" if "loss" in monitor else "max")
        restore = stopping.get("restore_best", True)
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor, patience=stopping.get("patience", 0), mode=mode, restore_best_weights=restore
            )
        )
    batch, x, y = run["batch_size"], data["x_train"], data["y_train"]
    fit_args = {"x": x, "y": y, "batch_size": batch, "shuffle": True}
    if run.get("augment_flip_lr"):
        fit_args = {"x": flip_dataset(x, y, batch, run["seed"], segmentation), "shuffle": False}  # it shuffles itself
    start = time.perf_counter()
    history = model.fit(
        **fit_args,
        epochs=run["epochs"],
        validation_data=(data["x_val"], data["y_val"]),
        validation_batch_size=run["eval_batch_size"],
        callbacks=callbacks,
        verbose=0,
    ).history
    train_s = time.perf_counter() - start
    model.save(out_dir / "model.keras")
    history = {key: [float(v) for v in values] for key, values in history.items()}
    save_history_and_curves(out_dir, history)
    final = len(history["loss"]) - 1
    if callbacks and callbacks[0].restore_best_weights and callbacks[0].best_weights is not None:
        final = callbacks[0].best_epoch
    result = _result(run, counts["params"], history, final, train_s)
    result["params_without_bn_stats"] = counts["params_without_bn_stats"]
    return result


# ---------------------------------------------------------------- main


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        sys.exit("usage: python benchmarks/study_peers.py PLAN.json")
    plan = json.loads(Path(argv[1]).read_text())
    framework = plan["framework"]
    train = {"torch": torch_run, "keras": keras_run}[framework]
    results = []
    for run in plan["runs"]:
        out_dir = Path(plan["out"]) / run["name"]
        out_dir.mkdir(parents=True, exist_ok=True)
        with np.load(run["data"]) as npz:
            data = {key: npz[key] for key in ("x_train", "y_train", "x_val", "y_val")}
        result = train(run, data, out_dir)
        metrics = " ".join(f"{k}={v:.4f}" for k, v in result["final"].items())
        line = f"{run['name']}: {result['epochs_run']} epochs in {result['train_s']:.1f}s, {metrics}"
        print(f"{plan.get('study', '')} {line}", file=sys.stderr)
        results.append(result)
    print(json.dumps({"framework": framework, "wall_s": time.perf_counter() - _START, "runs": results}), flush=True)


if __name__ == "__main__":
    main(sys.argv)
