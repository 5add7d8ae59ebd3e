"""benchmarks/conv_layers.py --quick: the rules table has a row per rule, each saying whether the rule agrees."""

import pytest

from benchmarks import conv_layers


@pytest.mark.slow
def test_rule_check_has_every_rule_and_an_agreement_column():
    rows = conv_layers.check_rules(quick=True, repeats=1)
    assert {row["rule"] for row in rows} == set(conv_layers.RULES)
    assert {row["mode"] for row in rows if row["rule"] != "im2col depth"} == {"inference", "training"}
    for row in rows:
        assert isinstance(row["agrees"], bool) and row["agrees"] == (row["winner"] == row["choice"])
        assert row["choice"] != row["other"] and row["choice_ms"] > 0 and row["other_ms"] > 0
    # the picks come from the rules themselves: a shallow patch goes to im2col, a gray image to 32
    # channels to lax, inference of non-overlapping pools to lax's pool, their training to the views
    picks = {(row["rule"], row["mode"], row["case"]): row["choice"] for row in rows}
    assert picks["im2col depth", "inference", "3x3 3->8 (depth 27)"] == "im2col"
    assert picks["im2col depth", "inference", "3x3 1->32 (depth 9)"] == "lax"
    assert picks["max pool", "inference", "2x2 s2 VALID (blocks)"] == "lax"
    assert picks["max pool", "training", "2x2 s2 VALID (blocks)"] == "views"
    assert picks["max pool", "inference", "3x3 s2 SAME (overlapping)"] == "views"


def test_quick_mode_prints_only_the_rules_table(monkeypatch, capsys):
    row = dict(rule="winograd", mode="training", case="3x3 8->8", input="1x8x8x8", choice="im2col", choice_ms=2.0)
    row |= dict(other="winograd", other_ms=1.0, ratio=0.5, winner="winograd", agrees=False)
    calls = []
    monkeypatch.setattr(conv_layers, "check_rules", lambda quick, repeats: calls.append((quick, repeats)) or [row])
    conv_layers.main(["--quick"])
    out = capsys.readouterr().out
    assert calls == [(True, 1)] and "Layers" not in out
    assert "0.50     NO" in out and "0 of 1 cases agree with their rule" in out
