"""Numbers and parameter sets as people read them (issue 21): `captions=alt, lr=1.33e-3`, not JSON with 16 digits."""

from __future__ import annotations

import pandas as pd

from ablate.analysis.formatting import number, params_text
from ablate.analysis.plots import config_labels


def test_numbers_keep_three_to_four_significant_digits() -> None:
    assert number(0.41234) == "0.4123" and number(0.41234, 3) == "0.412"
    assert number(0.0013274414292574908, 3) == "1.33e-3"  # small: scientific, no `e-03`
    assert number(7782785.0) == "7.783e6" and number(843008) == "8.43e5"  # large: no `+`, trailing zeros dropped
    assert number(300) == "300" and number(1.0) == "1" and number(0.01) == "0.01"
    assert number(-2.5e-5) == "-2.5e-5" and number(float("nan")) == "nan"
    assert number("alt") == "alt" and number(True) == "True"  # not numbers: as they are


def test_parameter_sets_use_short_names_unless_they_collide() -> None:
    params = {"data.captions": "alt", "optim.lr": 0.0013274414292574908}
    assert params_text(params) == "captions=alt, lr=1.33e-3"
    assert params_text({"a.scale": 1, "b.scale": 2.5}) == "a.scale=1, b.scale=2.5"
    assert params_text({}) == ""


def test_configuration_labels_in_figures_are_rounded() -> None:
    runs = pd.DataFrame(
        {
            "param.optim.lr": [0.0013274414292574908, 0.00042],
            "param.data.captions": ["alt", "syn"],
            "config_hash": ["a", "b"],
            "baseline": [None, None],
        }
    )
    labels = config_labels(runs, ["data.captions", "optim.lr"])
    assert list(labels) == ["captions=alt, lr=1.33e-3", "captions=syn, lr=4.2e-4"]
