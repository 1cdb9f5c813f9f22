"""Randomly mutated study files and base configs fed to `ablate launch --dry-run` in-process (typer's CliRunner):
whatever the mutation, the dry run exits 0 (a valid study) or 2 (one clear message), never with a traceback, with
a short output, in seconds (issue 17). Mutations act on the parsed tree (a value replaced by any YAML value, a key
dropped, a known or unknown key added) and on the text (bytes inserted, a line duplicated, the file cut short, an
alias bomb appended)."""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from ablate.ablations import storage_check
from ablate.ablations.cli import app

STUDIES = Path(__file__).parents[1] / "ablations" / "studies"
MAX_OUTPUT = 4096

SEED_STUDY: dict[str, Any] = {
    "name": "prop",
    "base": "base.yaml",
    "overrides": {"train.steps": 40},
    "search_space": {
        "optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "train.batch_size": {"type": "int", "low": 8, "high": 32, "step": 8},
        "data.captions": {"type": "categorical", "choices": ["alt", "syn"]},
        "seed": {"type": "fixed", "value": 1},
    },
    "replicates": {"seeds": [0, 1], "aggregate": "mean"},
    "baselines": {"plain": {"overrides": {"loss.lambda": 0.0}}},
    "objectives": [{"metric": "eval/zeroshot/mean_top1", "direction": "maximize"}],
    "sampler": {"name": "tpe", "seed": 0},
    "pruner": {"name": "median", "startup_trials": 1},
    "budget": {"trials": 3, "parallel": 1},
    "executor": {"kind": "local", "timeout_min": 5, "retries": 0},
    "storage": {"mlflow": "sqlite:///mlflow.db"},
}
SEED_BASE: dict[str, Any] = yaml.safe_load((STUDIES / "base" / "tiny_clip.yaml").read_text())
READY = {path.stem: yaml.safe_load(path.read_text()) for path in sorted(STUDIES.glob("*.yaml"))}

KNOWN_KEYS = [
    *SEED_STUDY,
    *SEED_BASE,
    "train.steps",
    "train.device",
    "data.reinforcement",
    "data.root",
    "tracking.uri",
    "model.name",
    "seed.value",
    "train.steps.max",
    "pruner",
    "sampler",
    "storage",
    "runs_root",
]
AWKWARD_STRINGS = [
    "",
    "[/x]",
    "[bold]",
    "journal:",
    "sqlite:///",
    "htp://x",
    "http://",
    "http://127.0.0.1:1",
    "postgresql://u@h:notaport/db",
    "bundled",
    "cuda",
    "ViT-B-32",
    "x" * 500,
    "../../etc/passwd",
    "a.b.c",
    "\u202e\u0000",
]
VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(10**6), 10**12),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=20),
        st.sampled_from(AWKWARD_STRINGS),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=8), st.sampled_from(KNOWN_KEYS)), inner, max_size=3),
    ),
    max_leaves=6,
)
BOMB = "\n".join(
    ['zz0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"zz{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
)


def _containers(tree: Any, path: tuple = ()) -> list[tuple]:
    """Paths of every mapping and list in `tree` (where a mutation can act)."""
    found = [path] if isinstance(tree, dict | list) else []
    children = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else []
    for key, child in children:
        found += _containers(child, (*path, key))
    return found


def _at(tree: Any, path: tuple) -> Any:
    for key in path:
        tree = tree[key]
    return tree


@st.composite
def mutated_tree(draw: st.DrawFn, seed: dict[str, Any]) -> dict[str, Any]:
    tree = copy.deepcopy(seed)
    for _ in range(draw(st.integers(1, 3))):
        node = _at(tree, draw(st.sampled_from(_containers(tree))))
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        operation = draw(st.sampled_from(["replace", "delete", "add"] if keys else ["add"]))
        if operation == "replace":
            node[draw(st.sampled_from(keys))] = copy.deepcopy(draw(VALUES))
        elif operation == "delete":
            del node[draw(st.sampled_from(keys))]
        elif isinstance(node, dict):
            node[draw(st.one_of(st.sampled_from(KNOWN_KEYS), st.text(max_size=10)))] = copy.deepcopy(draw(VALUES))
        else:
            node.append(copy.deepcopy(draw(VALUES)))
    return tree


@st.composite
def mutated_text(draw: st.DrawFn, tree: dict[str, Any]) -> bytes:
    text = yaml.safe_dump(tree, allow_unicode=True, sort_keys=False).encode()
    operation = draw(st.sampled_from(["none", "none", "insert", "duplicate_line", "cut", "bomb"]))
    if operation == "insert":
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.binary(min_size=1, max_size=8)) + text[at:]
    elif operation == "duplicate_line":
        lines = text.splitlines(keepends=True)
        index = draw(st.integers(0, len(lines) - 1))
        text = b"".join([*lines[: index + 1], lines[index], *lines[index + 1 :]])
    elif operation == "cut":
        text = text[: draw(st.integers(0, len(text)))]
    elif operation == "bomb":
        text = BOMB.encode() + b"\n" + text + b"description: *l8\n"
    return text


@st.composite
def study_case(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """(study file, base file): one of them mutated, the study a seed of ours or a ready one."""
    name = draw(st.sampled_from(["seed", "seed", *READY]))
    study = copy.deepcopy(SEED_STUDY if name == "seed" else READY[name])
    if name != "seed" and isinstance(study.get("base"), str):
        study["base"] = str(STUDIES / study["base"])
    if draw(st.booleans()):
        return draw(mutated_text(draw(mutated_tree(study)))), yaml.safe_dump(SEED_BASE).encode()
    study["base"] = "base.yaml"
    return yaml.safe_dump(study).encode(), draw(mutated_text(draw(mutated_tree(SEED_BASE))))


SEEN: dict[str, Any] = {"cases": 0, "slowest_s": 0.0, "exit": {}}


def test_mutated_studies_and_configs_exit_0_or_2_quickly(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(storage_check, "REMOTE_DEADLINE_S", 1.0)
    runner = CliRunner()

    @settings(
        max_examples=int(os.environ.get("ABLATE_PROPERTY_EXAMPLES", "120")),  # 120: about 60 s on 2 cores
        deadline=None,  # timed below, against a bound that holds on a loaded 2-core machine
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        derandomize="ABLATE_PROPERTY_EXAMPLES" not in os.environ,  # CI: the same cases; a long hunt: new ones
    )
    @given(study_case())
    def dry_run_of(case: tuple[bytes, bytes]) -> None:
        study_text, base_text = case
        folder = tmp_path / f"case-{SEEN['cases']}"
        folder.mkdir()
        (folder / "study.yaml").write_bytes(study_text)
        (folder / "base.yaml").write_bytes(base_text)
        monkeypatch.chdir(folder)  # the default stores (runs/, mlflow.db) are relative to the working directory
        started = time.perf_counter()
        result = runner.invoke(app, ["launch", "--dry-run", str(folder / "study.yaml")])
        seconds = time.perf_counter() - started
        monkeypatch.chdir(tmp_path)
        SEEN["cases"] += 1
        SEEN["slowest_s"] = max(SEEN["slowest_s"], seconds)
        SEEN["exit"][result.exit_code] = SEEN["exit"].get(result.exit_code, 0) + 1
        assert result.exit_code in (0, 2), (result.exception, result.output[-2000:], study_text[:2000])
        assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
        assert "Traceback" not in result.output
        assert len(result.output) < MAX_OUTPUT, result.output[:500]
        assert seconds < 15, (seconds, study_text[:500])

    dry_run_of()
    print(f"\nmutated dry runs: {SEEN['cases']} cases, exit codes {SEEN['exit']}, slowest {SEEN['slowest_s']:.2f} s")
    assert SEEN["exit"].get(2, 0) > 0
