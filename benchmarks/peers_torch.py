"""PyTorch 2 eager peers of benchmarks/speed.py (torch is a benchmark-only dependency; no torchvision).

Each workload's architecture written in torch with labjax's parameter count (BatchNorm running
statistics counted, as Keras and labjax do): W0 MobileNetV2 encoder + pix2pix decoder, W1
ResNet50 (bottleneck blocks, biased convolutions as Keras') with the small-image stem, W2 the
S2 CNN, W3 DenseNet121 + Linear, W4 ConvNN_1. Training is the usual eager loop (zero_grad,
forward, cross-entropy, backward, step, plus the batch accuracy labjax and Keras also compute)
on all cores, channels-last where the workload says it is faster. On a machine with a CUDA GPU the
model and batch live on it (cudnn.benchmark on, as a practitioner sets it); `precision` bfloat16 runs
the forward pass under torch.autocast (float32 weights and optimizer, as the others' mixed precision).
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks.speed_common import SEED, Workload, peak_rss_mb, random_arrays, time_calls  # noqa: E402

KERAS_BN_EPSILON = 1e-3  # MobileNetV2 and the pix2pix decoder (Keras' default)
RESNET_EPSILON = 1.001e-5  # keras.applications' ResNet and DenseNet


def _bn(channels: int, eps: float) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=eps)


class InvertedResidual(nn.Module):
    """MobileNetV2's block as Keras writes it: [1x1 expand BN ReLU6] 3x3 depthwise BN ReLU6, 1x1 project [BN]."""

    def __init__(self, cin: int, expansion: int, cout: int, stride: int, project_bn: bool = True):
        super().__init__()
        hidden = cin * expansion
        self.expand = None
        if expansion != 1:
            self.expand = nn.Sequential(nn.Conv2d(cin, hidden, 1, bias=False), _bn(hidden, 1e-3), nn.ReLU6())
        self.depthwise = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), _bn(hidden, 1e-3), nn.ReLU6()
        )
        self.project = nn.Conv2d(hidden, cout, 1, bias=False)
        self.project_bn = _bn(cout, 1e-3) if project_bn else nn.Identity()
        self.residual = stride == 1 and cin == cout and project_bn

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(block output, expand_relu output) - the U-Net taps the latter."""
        expanded = x if self.expand is None else self.expand(x)
        y = self.project_bn(self.project(self.depthwise(expanded)))
        return (x + y if self.residual else y), expanded


# (expansion, output filters, stride) of blocks 0..16, as labjax.models.mobilenet_v2.BLOCKS.
MOBILENET_BLOCKS = (
    (1, 16, 1), (6, 24, 2), (6, 24, 1), (6, 32, 2), (6, 32, 1), (6, 32, 1), (6, 64, 2), (6, 64, 1), (6, 64, 1),
    (6, 64, 1), (6, 96, 1), (6, 96, 1), (6, 96, 1), (6, 160, 2), (6, 160, 1), (6, 160, 1), (6, 320, 1),
)  # fmt: skip
SKIP_EXPANDS = (1, 3, 6, 13)  # block_{i}_expand_relu taps; the fifth is block_16_project (before its BN)


class MobileNetV2UNet(nn.Module):
    """The TensorFlow tutorial's U-Net: MobileNetV2 up to block_16_project + four pix2pix upsamplers."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1, bias=False), _bn(32, 1e-3), nn.ReLU6())
        blocks, cin = [], 32
        for index, (expansion, cout, stride) in enumerate(MOBILENET_BLOCKS):
            last = index == len(MOBILENET_BLOCKS) - 1
            blocks.append(InvertedResidual(cin, expansion, cout, stride, project_bn=not last))
            cin = cout
        self.blocks = nn.ModuleList(blocks)
        skip_channels = [cin * 6 for cin in (16, 24, 32, 96)]  # expand outputs of blocks 1, 3, 6, 13
        ups = []
        for filters, skip in zip((512, 256, 128, 64), reversed(skip_channels)):
            ups.append(
                nn.Sequential(
                    nn.ConvTranspose2d(cin, filters, 3, 2, 1, output_padding=1, bias=False),
                    _bn(filters, KERAS_BN_EPSILON),
                    nn.ReLU(),
                )
            )
            cin = filters + skip
        self.ups = nn.ModuleList(ups)
        self.logits = nn.ConvTranspose2d(cin, num_classes, 3, 2, 1, output_padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, skips = self.stem(x), []
        for index, block in enumerate(self.blocks):
            x, expanded = block(x)
            if index in SKIP_EXPANDS:
                skips.append(expanded)
        for up, skip in zip(self.ups, reversed(skips)):
            x = torch.cat([up(x), skip], dim=1)
        return self.logits(x)


class Bottleneck(nn.Module):
    """Keras' residual_block_v1: 1x1 (strided) BN ReLU, 3x3 BN ReLU, 1x1 (4x) BN, + shortcut, ReLU."""

    def __init__(self, cin: int, filters: int, stride: int, conv_shortcut: bool):
        super().__init__()
        out = 4 * filters
        self.shortcut = (
            nn.Sequential(nn.Conv2d(cin, out, 1, stride), _bn(out, RESNET_EPSILON)) if conv_shortcut else nn.Identity()
        )
        self.body = nn.Sequential(
            nn.Conv2d(cin, filters, 1, stride),
            _bn(filters, RESNET_EPSILON),
            nn.ReLU(),
            nn.Conv2d(filters, filters, 3, 1, 1),
            _bn(filters, RESNET_EPSILON),
            nn.ReLU(),
            nn.Conv2d(filters, out, 1),
            _bn(out, RESNET_EPSILON),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.shortcut(x) + self.body(x))


def resnet50_small(workload: Workload) -> nn.Module:
    """ResNet50 with a 3x3 stride-1 stem, no max-pool, average pooling, dropout, Linear."""
    layers: list[nn.Module] = [nn.Conv2d(workload.image_shape[2], 64, 3, 1, 1), _bn(64, RESNET_EPSILON), nn.ReLU()]
    cin = 64
    for stage, blocks in enumerate((3, 4, 6, 3)):
        filters = 64 * 2**stage
        for index in range(blocks):
            layers.append(Bottleneck(cin, filters, 2 if stage and not index else 1, conv_shortcut=not index))
            cin = 4 * filters
    head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(workload.dropout), nn.Linear(cin, workload.num_classes)]
    return nn.Sequential(*layers, *head)


def small_cnn(workload: Workload) -> nn.Module:
    """S2's CNN: Conv(32) MaxPool Conv(64) AvgPool Conv(128), Dropout, Dense(64), Dense(classes)."""
    size = workload.image_shape[0]
    side = ((size - 2) // 2 - 2) // 2 - 2
    return nn.Sequential(
        nn.Conv2d(workload.image_shape[2], 32, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Conv2d(64, 128, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Dropout(workload.dropout),
        nn.Linear(128 * side * side, 64),
        nn.ReLU(),
        nn.Linear(64, workload.num_classes),
    )


class DenseLayer(nn.Module):
    """DenseNet-BC's conv_block: BN ReLU 1x1(4k) BN ReLU 3x3(k), on the concatenation of all before it."""

    def __init__(self, cin: int, growth: int = 32):
        super().__init__()
        self.body = nn.Sequential(
            _bn(cin, RESNET_EPSILON),
            nn.ReLU(),
            nn.Conv2d(cin, 4 * growth, 1, bias=False),
            _bn(4 * growth, RESNET_EPSILON),
            nn.ReLU(),
            nn.Conv2d(4 * growth, growth, 3, 1, 1, bias=False),
        )

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.body(torch.cat(features, dim=1))


class DenseNet121(nn.Module):
    """keras.applications.DenseNet121 without its top, average pooled (include_top=False, pooling='avg')."""

    def __init__(self, channels: int = 3, blocks: tuple[int, ...] = (6, 12, 24, 16)):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(channels, 64, 7, 2, 3, bias=False), _bn(64, RESNET_EPSILON), nn.ReLU(), nn.MaxPool2d(3, 2, 1)
        )
        cin, stages = 64, []
        for index, count in enumerate(blocks):
            layers = nn.ModuleList(DenseLayer(cin + 32 * i) for i in range(count))
            cin += 32 * count
            transition = nn.Identity()
            if index < len(blocks) - 1:
                transition = nn.Sequential(
                    _bn(cin, RESNET_EPSILON), nn.ReLU(), nn.Conv2d(cin, cin // 2, 1, bias=False), nn.AvgPool2d(2)
                )
                cin //= 2
            stages.append(nn.ModuleDict({"layers": layers, "transition": transition}))
        self.stages = nn.ModuleList(stages)
        self.final = nn.Sequential(_bn(cin, RESNET_EPSILON), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.features = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            features = [x]
            for layer in stage["layers"]:
                features.append(layer(features))
            x = stage["transition"](torch.cat(features, dim=1))
        return self.final(x)


class DenseNetClassifier(nn.Module):
    """DenseNet121 + Linear; a frozen base has no gradients and keeps its BatchNorm in eval mode."""

    def __init__(self, workload: Workload):
        super().__init__()
        self.base = DenseNet121(workload.image_shape[2])
        self.head = nn.Linear(self.base.features, workload.num_classes)
        self.frozen = workload.frozen_base
        if self.frozen:
            self.base.requires_grad_(False)

    def train(self, mode: bool = True) -> DenseNetClassifier:
        super().train(mode)
        if self.frozen:
            self.base.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.base(x))


def convnn1(workload: Workload) -> nn.Module:
    """S4's ConvNN_1 as the study wrote it."""
    h, w, c = workload.image_shape
    side_h, side_w = ((h + 2) // 2 - 2) // 2, (w // 2 - 2) // 2  # padding (2, 1), two 2x2 pools
    return nn.Sequential(
        nn.Conv2d(c, 8, 3, padding=(2, 1)),
        nn.MaxPool2d(2),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3),
        nn.MaxPool2d(2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * side_h * side_w, 40),
        nn.ReLU(),
        nn.Linear(40, workload.num_classes),
    )


def build_model(workload: Workload) -> nn.Module:
    """The torch model of `workload` (random weights)."""
    study = workload.name.split("/")[0]
    if study == "W0":
        return MobileNetV2UNet(workload.num_classes)
    builders = {"W1": resnet50_small, "W2": small_cnn, "W3": DenseNetClassifier, "W4": convnn1}
    return builders[study](workload)


def param_counts(model: nn.Module) -> dict[str, int]:
    """Parameters plus BatchNorm running statistics (as Keras counts); trainable: those with gradients."""
    stats = sum(b.numel() for name, b in model.named_buffers() if name.endswith(("running_mean", "running_var")))
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"params": int(params + stats), "trainable": int(trainable)}


def run(
    workload: Workload,
    mode: str,
    *,
    steps: int,
    warmup: int,
    windows: int,
    infer: bool,
    threads: int = 0,
    precision: str = "float32",
) -> dict:
    """Times the eager training loop and, with `infer`, eval-mode forward passes under inference_mode.

    `threads` 0 means one per core. On a machine others share, fewer can be much faster: PyTorch's
    OpenMP workers spin at every barrier while waiting for a core.
    """
    if mode != "eager":
        raise ValueError(f"torch mode {mode!r}: only eager")
    threads = threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    torch.manual_seed(SEED)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    on_gpu = device.type == "cuda"
    torch.backends.cudnn.benchmark = on_gpu
    model = build_model(workload)
    # cuDNN's fast convolutions want channels-last everywhere; on a CPU only where measured faster.
    layout = torch.channels_last if workload.torch_channels_last or on_gpu else torch.contiguous_format
    model = model.to(device=device, memory_format=layout)
    images, labels = random_arrays(workload, workload.batch_size)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(memory_format=layout).to(device)
    y = torch.from_numpy(labels).long().to(device)
    if precision == "float32":
        autocast = contextlib.nullcontext
    else:
        autocast = lambda: torch.autocast(device.type, dtype=getattr(torch, precision))  # noqa: E731
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if workload.optimizer == "sgd":
        optimizer = torch.optim.SGD(trainable, workload.learning_rate, momentum=0.9, weight_decay=1e-4)
    else:
        optimizer = torch.optim.Adam(trainable, workload.learning_rate, eps=workload.adam_eps)
    model.train()

    def train_call() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        loss.backward()
        optimizer.step()
        (logits.detach().argmax(1) == y).float().mean()  # the batch accuracy the others compute

    timing = time_calls(
        train_call, calls=steps, warmup=warmup, windows=windows, images_per_call=workload.batch_size, sync=sync
    )
    result = {
        "framework": "torch",
        "mode": mode,
        "label": "torch eager"
        + (" cuda" if on_gpu else "")
        + (" channels-last" if layout == torch.channels_last else "")
        + ("" if on_gpu else f" {threads}T"),
        "train_rate": timing["rate"],
        "train_windows": timing["windows"],
        "first_step_s": timing["first_s"],
        **param_counts(model),
        "threads": threads,
    }
    if infer:
        model.eval()

        def infer_call() -> None:
            with torch.inference_mode(), autocast():
                model(x)

        result["infer_rate"] = time_calls(
            infer_call, calls=steps, warmup=warmup, windows=windows, images_per_call=workload.batch_size, sync=sync
        )["rate"]
    result["peak_rss_mb"] = peak_rss_mb()
    if on_gpu:
        result["peak_device_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result
