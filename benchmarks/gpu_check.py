"""The GPU path, checked and measured by one command: what a lent H100/H200 should run, in under 8 minutes.

    .venv/bin/python benchmarks/gpu_check.py --device cuda --out "$OUT"      # on the GPU machine
    .venv/bin/python benchmarks/gpu_check.py --device cpu --quick --out DIR  # the same code, small shapes

Sections, each timed and recorded even when another fails (a failure is data, not the end of the run):
1. `tests`: `pytest -m device` with ABLATE_TEST_DEVICE set (tests/test_device.py: bf16/fp16 loss terms within unit
   roundoff of fp32, channels-last equivalence, a one-process nccl group, device checkpoint resumed on CPU, device
   RNG restore), plus the compiled two-stage compression test when present;
2. `train_step`: benchmarks/train_step.py's paths for a MobileCLIP-S0 and a ViT-B/16 student at 224–256 px:
   ours vs open_clip's `train_one_epoch` (step-time ratio), stored-KD vs plain step, compile on vs off, MFU (FLOPs
   from torch.utils.flop_counter over the card's dense bf16 peak) and peak memory;
3. `token_merging`: ToMe throughput of a ViT-B/16 image tower at r = 0, 8, 13 (images/s, speed-up, FLOP ratio);
4. `pruned_latency`: a q = 0.5 pruned student against its dense original (forward latency, parameters).

It writes `gpu_check.json` and a readable `gpu_check.md` into --out ($OUT on the device machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pruned_latency
import train_step

from ablate.core.merging import MergeSchedule, token_merging
from ablate.core.models.factory import create_model

ROOT = Path(__file__).resolve().parent.parent
# Dense bf16 tensor-core peaks (SXM parts; H200 has H100's compute with more, faster memory).
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
COMPILED_COMPRESSION_TEST = "tests/test_compression_compile.py"


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for card, peak in PEAK_BF16_TFLOPS.items() if card in name), None)


def device_tests(device: torch.device, out: Path, timeout_s: int, selection: str | None) -> dict:
    """`pytest -m device` on `device`, in a subprocess so a crash is a result; counts and failures from JUnit XML."""
    report = out / "device_tests.xml"
    targets = ["tests/test_device.py"]
    if (ROOT / COMPILED_COMPRESSION_TEST).is_file():
        targets.append(COMPILED_COMPRESSION_TEST)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "device", *targets]
    command += [f"--junitxml={report}", f"--timeout={timeout_s}", *(["-k", selection] if selection else [])]
    env = os.environ | {"ABLATE_TEST_DEVICE": device.type, "HF_HUB_OFFLINE": "1"}
    completed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s + 60)
    cases = ElementTree.parse(report).getroot().iter("testcase") if report.is_file() else []
    results = {}
    for case in cases:
        problem = case.find("failure") if case.find("failure") is not None else case.find("error")
        skipped = case.find("skipped")
        state = "failed" if problem is not None else "skipped" if skipped is not None else "passed"
        detail = (problem.get("message") if problem is not None else skipped.get("message") if skipped else "") or ""
        results[case.get("name")] = {"state": state, "seconds": float(case.get("time", 0)), "detail": detail[:500]}
    counts = {state: sum(r["state"] == state for r in results.values()) for state in ("passed", "failed", "skipped")}
    return {
        "exit_code": completed.returncode,
        "counts": counts,
        "tests": results,
        "output_tail": completed.stdout[-3000:],
    }


def train_step_section(device: torch.device, quick: bool) -> list[dict]:
    """Step time of our trainer against open_clip's loop on the same model and batches, with ratios per round."""
    students = [("tiny", 64, 8)] if quick else [("MobileCLIP-S0", 256, 256), ("ViT-B-16", 224, 256)]
    rows = []
    for name, image_size, batch in students:
        args = SimpleNamespace(
            image_size=image_size,
            batch=batch,
            precision="bf16" if device.type == "cuda" else "fp32",
            steps=1 if quick else 10,
            rounds=1 if quick else 3,
            paths=["ours-stored", "ours-eager"],
            peak_tflops=peak_tflops(device),
        )
        try:
            rows.append(train_step.benchmark_model(name, args, device))
        except Exception as err:  # one model failing (e.g. out of memory) must not hide the other's figures
            rows.append({"model": name, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()})
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def token_merging_section(device: torch.device, quick: bool) -> list[dict]:
    """ToMe on a ViT-B/16 image tower (quick: a 4-block ViT-Ti at 64 px): images/s and FLOPs per merge count r."""
    torch.manual_seed(0)
    if quick:
        tower = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, depth=4, num_classes=0)
        size, batch, rs = 64, 4, [0, 1, 2]
    else:
        tower = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=512)
        size, batch, rs = 224, 256, [0, 8, 13]
    tower = tower.to(device).eval()
    images = torch.randn(batch, 3, size, size, device=device)
    dtype = torch.bfloat16 if device.type == "cuda" else None
    rows = []
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        for r in rs:
            with token_merging(tower, MergeSchedule(r=r)) as handle:

                def run(enabled: bool, h=handle) -> object:
                    h.enabled = enabled
                    return tower(images)

                exact, merged = (lambda: run(False)), (lambda: run(True))
                speeds = train_step.measure({"exact": exact, "merged": merged}, 3, batch, device)
                exact_flops, merged_flops = forward_flops(exact), forward_flops(merged)
            rows.append(
                {
                    "r": r,
                    "images_per_s": statistics.median(speeds["merged"]),
                    "speedup": train_step.paired_ratio(speeds["merged"], speeds["exact"]),
                    "flop_ratio": exact_flops / merged_flops,
                }
            )
    return rows


def forward_flops(run: Callable[[], object]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops()


def pruned_latency_section(device: torch.device, quick: bool) -> dict:
    """Forward latency of a student pruned to q = 0.5 against the dense one (quick: `tiny` at batch 2)."""
    name, batch = ("tiny", 2) if quick else ("ViT-B-16", 256)
    torch.manual_seed(0)
    dense = create_model(name).eval()
    pruned, counts = pruned_latency.prune_to(create_model(name), 0.5)
    images, tokens = pruned_latency.make_inputs(dense, batch)
    images, tokens = images.to(device), tokens.to(device)
    models = {"dense": dense.to(device), "pruned": pruned.to(device)}
    dtype = torch.bfloat16 if device.type == "cuda" else None
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        speeds = train_step.measure({k: lambda m=m: m(images, tokens) for k, m in models.items()}, 5, batch, device)
    parameters = {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()}
    return {
        "model": name,
        "batch": batch,
        "seconds": {k: batch / statistics.median(v) for k, v in speeds.items()},
        "speedup": train_step.paired_ratio(speeds["pruned"], speeds["dense"]),
        "parameters": parameters,
        "parameter_ratio": parameters["pruned"] / parameters["dense"],
        "prune_counts": counts,
    }


def run_section(name: str, work: Callable[[], object], report: dict) -> None:
    start = time.perf_counter()
    try:
        report[name] = {"result": work()}
    except Exception as err:
        report[name] = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
    report[name]["seconds"] = time.perf_counter() - start
    print(f"{name}: {'failed' if 'error' in report[name] else 'done'} in {report[name]['seconds']:.0f} s", flush=True)


def summary(report: dict) -> str:
    """The report as Markdown: what passed, each figure with the card it came from."""
    lines = [f"# GPU check on {report['device']} ({report['when']})", "", f"torch {report['torch']}", ""]
    for name, section in report.items():
        if not isinstance(section, dict) or ("result" not in section and "error" not in section):
            continue
        lines.append(f"## {name} ({section['seconds']:.0f} s)")
        if "error" in section:
            lines += ["", f"FAILED: {section['error']}", ""]
            continue
        result = section["result"]
        if name == "tests":
            lines.append(f"exit code {result['exit_code']}, {result['counts']}")
            lines += [f"- {test}: {r['state']} {r['detail'][:200]}" for test, r in result["tests"].items()]
        elif name == "train_step":
            for row in result:
                if "error" in row:
                    lines.append(f"- {row['model']}: FAILED {row['error']}")
                    continue
                ratios = row["step_time_over_plain"]
                lines.append(
                    f"- {row['model']}: step time ours/open_clip {row['step_time_ours_over_open_clip']:.3f}, "
                    f"stored-KD/plain {ratios.get('ours-stored', float('nan')):.3f}, "
                    f"eager/compiled {ratios.get('ours-eager', float('nan')):.3f}, "
                    f"MFU {_percent(row.get('mfu'))}, peak memory {_gib(row.get('peak_memory_gib'))}, "
                    f"resolved {row['resolved']}"
                )
        elif name == "token_merging":
            lines += [
                f"- r={row['r']}: {row['images_per_s']:.1f} images/s, speed-up {row['speedup']:.2f}x, "
                f"FLOPs {row['flop_ratio']:.2f}x fewer"
                for row in result
            ]
        elif name == "pruned_latency":
            lines.append(
                f"- {result['model']} batch {result['batch']}: pruned q=0.5 is {result['speedup']:.2f}x faster, "
                f"{result['parameter_ratio']:.3f} of the parameters"
            )
        lines.append("")
    return "\n".join(lines)


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _gib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} GiB"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="small shapes (the test suite runs this on CPU)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ROOT / "benchmarks" / "results")))
    parser.add_argument("--sections", nargs="+", default=["tests", "train_step", "token_merging", "pruned_latency"])
    parser.add_argument("--test-timeout", type=int, default=240, help="seconds for the device tests")
    parser.add_argument("--test-selection", default=None, help="pytest -k expression for the device tests")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})",
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "quick": args.quick,
    }
    sections = {
        "tests": lambda: device_tests(device, args.out, args.test_timeout, args.test_selection),
        "train_step": lambda: train_step_section(device, args.quick),
        "token_merging": lambda: token_merging_section(device, args.quick),
        "pruned_latency": lambda: pruned_latency_section(device, args.quick),
    }
    for name in args.sections:
        run_section(name, sections[name], report)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    (args.out / "gpu_check.md").write_text(summary(report))
    print(summary(report))
    return report


if __name__ == "__main__":
    main()
