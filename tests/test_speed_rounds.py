"""benchmarks/speed.py --rounds: rows run in turn R times, rates are medians, ratios are taken within a round."""

import pytest

from benchmarks import speed


def test_merge_rounds_takes_medians_the_highest_peak_and_keeps_each_rounds_rate():
    rounds = [
        {"train_rate": 10.0, "infer_rate": 40.0, "first_step_s": 3.0, "peak_rss_mb": 900, "label": "torch eager"},
        {"train_rate": 30.0, "infer_rate": 20.0, "first_step_s": 5.0, "peak_rss_mb": 1200, "label": "torch eager"},
        {"train_rate": 20.0, "infer_rate": None, "first_step_s": 4.0, "peak_rss_mb": 1000, "label": "torch eager"},
    ]
    merged = speed.merge_rounds(rounds)
    assert merged["train_rate"] == 20.0 and merged["first_step_s"] == 4.0
    assert merged["infer_rate"] == 30.0  # the median of the rounds that measured it
    assert merged["peak_rss_mb"] == 1200
    assert merged["round_rates"] == [10.0, 30.0, 20.0]
    failed = {"failed": "exit 1: out of memory"}
    assert speed.merge_rounds([rounds[0], failed, rounds[2]]) is failed


def test_round_ratios_compare_the_fastest_rows_of_one_round():
    rows = [
        [{"framework": "labjax", "train_rate": 12.0}, {"framework": "labjax", "train_rate": 30.0},
         {"framework": "torch", "train_rate": 20.0}, {"framework": "keras_jax", "train_rate": 25.0}],
        [{"framework": "labjax", "train_rate": 10.0}, {"framework": "torch", "skipped": "no torch"}],
        [{"framework": "labjax", "train_rate": 9.0}, {"framework": "torch", "train_rate": 10.0}],
    ]  # fmt: skip
    assert speed.round_ratios(rows) == pytest.approx([1.2, 0.9])


def test_rounds_alternate_the_rows_and_report_each_rounds_ratio(monkeypatch, capsys):
    # The machine slows down round by round; labjax stays 1.5x torch within each round, though its
    # last round is slower than torch's first: only ratios within a round say how the two compare.
    speeds = iter([100.0, 60.0, 30.0])
    calls, profiled, torch_rate = [], [], {}

    def fake_row(row, framework, extra, timeout, huge_pages="labjax"):
        calls.append(row)
        profiled.append("--profile=2" in extra)
        if row == "ceiling":
            return {"gflops": 100.0, "rates": {"numpy": 100.0}, "size": 2048, "device": "cpu"}
        if framework == "labjax":
            torch_rate["now"] = next(speeds)  # this round's machine speed, torch's rate
            return _result(1.5 * torch_rate["now"])
        return _result(torch_rate["now"])

    monkeypatch.setattr(speed, "run_row", fake_row)
    loads = iter([0.9, 0.5, 1.0, 2.5, 2.0, 1.5, 1.0])  # the ceiling's, then one per row as it starts
    monkeypatch.setattr(speed.os, "getloadavg", lambda: (next(loads), 0.0, 0.0))
    speed.main(["--workloads", "W2/b32", "--peers", "torch", "--rounds", "3", "--profile", "2"])
    out = capsys.readouterr().out
    assert [c for c in calls if c != "ceiling"] == ["W2/b32:labjax:step", "W2/b32:torch:eager"] * 3
    assert profiled[1:] == [True, True] + [False] * 4  # after the ceiling's call, first round only
    assert "[W2/b32 round 2/3] torch eager: 60.0 img/s" in out
    assert "labjax / best peer, training, round by round: 1.50x, 1.50x, 1.50x; median 1.50x" in out
    assert "load average (1 min) at the rows' starts: 0.5 to 2.5" in out  # every round's
    table = next(line for line in out.splitlines() if line.startswith("labjax step"))
    assert table.split()[2] == "90.0"  # the median of 150, 90 and 45


def test_rounds_below_one_are_refused(capsys):
    with pytest.raises(SystemExit):
        speed.main(["--workloads", "W4", "--rounds", "0"])
    assert "--rounds: 0 is not a count of rounds; give 1 or more" in capsys.readouterr().err


def _result(rate: float) -> dict:
    return {"train_rate": rate, "first_step_s": 1.0, "peak_rss_mb": 500, "params": 10, "trainable": 10}
