"""benchmarks/gpu_check.py runs end to end on the CPU with small shapes: the code a lent GPU runs is the code CI
runs (issue 20), so the only thing left to a GPU session is the device itself."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.slow
def test_gpu_check_runs_every_section_on_cpu_and_writes_its_report(tmp_path: Path) -> None:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(BENCHMARKS))
    # The device tests run in full in the suite itself; here two cheap ones prove the subprocess and JUnit path.
    gpu_check.main(["--device", "cpu", "--quick", "--out", str(tmp_path), "--test-selection", "group or rng"])
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    for section in ("tests", "train_step", "token_merging", "pruned_latency"):
        assert "error" not in report[section], report[section]
    tests = report["tests"]["result"]
    assert tests["exit_code"] == 0 and tests["counts"]["passed"] == 2 and tests["counts"]["failed"] == 0, tests
    (step,) = report["train_step"]["result"]
    assert step["model"] == "tiny" and step["step_time_ours_over_open_clip"] > 0
    assert set(step["step_time_over_plain"]) == {"ours-stored", "ours-eager"}
    merging = report["token_merging"]["result"]
    assert [row["r"] for row in merging] == [0, 1, 2]
    assert merging[0]["flop_ratio"] == pytest.approx(1.0) and merging[-1]["flop_ratio"] > 1.0
    pruned = report["pruned_latency"]["result"]
    assert 0.3 < pruned["parameter_ratio"] < 0.9
    summary = (tmp_path / "gpu_check.md").read_text()
    assert "## train_step" in summary and "step time ours/open_clip" in summary
