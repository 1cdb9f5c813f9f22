"""Config errors name the source, the field path and the value; the CLI shows them without a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ablate.core.config.base import ConfigError
from ablate.core.config.loading import load_train_config, parse_override


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_are_valid() -> None:
    config = load_train_config(None)
    assert config.model.name == "tiny"
    assert config.tracking.uri == "sqlite:///mlflow.db"


def test_unknown_key_is_named_with_a_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.yaml", "optim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as caught:
        load_train_config(path)
    message = str(caught.value)
    assert str(path) in message
    assert "optim.lrr: unknown key" in message
    assert "did you mean 'lr'" in message


def test_wrong_type_names_field_and_value(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.yaml", "train:\n  steps: many\n")
    with pytest.raises(ConfigError, match=r"train\.steps: .*integer.*'many'"):
        load_train_config(path)


def test_out_of_range_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"optim\.lr: .*greater than 0.*-1"):
        load_train_config(None, ["optim.lr=-1"])


def test_cross_field_rule() -> None:
    with pytest.raises(ConfigError, match=r"loss\.alpha is 0\.5.*no compression section"):
        load_train_config(None, ["loss.alpha=0.5"])


def test_warmup_that_does_not_fit_is_clamped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """The default 50-step warmup used to make any `--set train.steps=N` with N <= 50 fail."""
    with caplog.at_level("WARNING", logger="ablate.config"):
        config = load_train_config(None, ["train.steps=20"])
        again = load_train_config(None, ["train.steps=20"])
    assert config.optim.warmup_for(20) == again.optim.warmup_for(20) == 2  # 10% of the run
    assert [r.getMessage() for r in caplog.records] == [  # said once, however often the config is validated
        "optim.warmup_steps (50 steps) does not fit train.steps (20): clamped to 2 steps"
    ]
    fraction = load_train_config(None, ["train.steps=3", "optim.warmup_fraction=0.9"])
    assert fraction.optim.warmup_for(3) == 0 and fraction.optim.warmup_fraction is None
    assert load_train_config(None, ["train.steps=100"]).optim.warmup_steps == 50  # a warmup that fits is kept


def test_cli_says_what_it_does_before_importing_torch() -> None:
    """`ablate train` prints before its slow imports; that only helps if the CLI's own modules stay light."""
    heavy = "('torch', 'open_clip', 'mlflow', 'optuna', 'pandas')"
    code = f"import sys, ablate.ablations.cli; print(sorted(m for m in {heavy} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_yaml_syntax_error_gives_line(tmp_path: Path) -> None:
    path = write(tmp_path / "broken.yaml", "optim:\n  lr: [1, 2\n")
    with pytest.raises(ConfigError, match=r"line \d+"):
        load_train_config(path)


def test_overrides_are_parsed_as_yaml_scalars() -> None:
    assert parse_override("optim.lr=1.0e-3") == ("optim.lr", 0.001)
    assert parse_override("data.root=null") == ("data.root", None)
    assert parse_override("train.progress=false") == ("train.progress", False)
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("optim.lr")
    config = load_train_config(None, ["optim.lr=1e-3", "train.steps=500"])
    assert config.optim.lr == 0.001 and config.train.steps == 500


def test_cli_reports_bad_key_without_traceback(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.yaml", "model:\n  nmae: tiny\n")
    done = subprocess.run(
        [sys.executable, "-m", "ablate", "train", str(path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert "model.nmae: unknown key" in done.stderr
    assert "did you mean 'name'" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
