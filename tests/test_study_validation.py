"""A corpus of malformed study files (tests/studies/malformed/*.yaml, each stating the message it expects in its
first line): every one fails the dry run with a one-line message that names the field, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ablate.ablations.plan import plan_study
from ablate.ablations.scheduler import prepare
from ablate.core.config.base import ConfigError

CORPUS = sorted((Path(__file__).parent / "studies" / "malformed").glob("*.yaml"))


def expected_message(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} must state its expected message on line 1"
    return first.removeprefix("# expect: ")


def dry_run(path: Path) -> None:
    spec, base = prepare(path)
    plan_study(spec, base, str(path))


def test_the_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 30


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_malformed_study_fails_with_a_one_line_message(path: Path) -> None:
    with pytest.raises((ConfigError, FileNotFoundError)) as caught:
        dry_run(path)
    message = str(caught.value)
    assert expected_message(path) in message
    assert "\n" not in message.strip()
    if "invalid YAML" not in message:
        assert str(path) in message or "data.root" in message


@pytest.mark.parametrize("name", ["unknown_search_path", "bad_yaml_unclosed_bracket", "objective_not_logged"])
def test_cli_dry_run_prints_the_message_without_a_traceback(name: str) -> None:
    path = Path(__file__).parent / "studies" / "malformed" / f"{name}.yaml"
    done = subprocess.run(
        [sys.executable, "-m", "ablate", "launch", "--dry-run", str(path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert expected_message(path) in " ".join(done.stderr.split())
    assert "Traceback" not in done.stderr + done.stdout


def test_ready_studies_pass_the_dry_run() -> None:
    studies = sorted((Path(__file__).parents[1] / "ablations" / "studies").glob("*.yaml"))
    assert studies
    for path in studies:
        dry_run(path)
