"""The performance issue's targets against what a run of `gpu_suite.sh` measured: reads the parts' JSON results from a
folder, measures the device's dense matrix-product ceiling (so that model FLOPs utilisation can be read against
what the card delivers, beside the datasheet peak), prints one table (last, so that a device call's output tail
holds it) and writes it to `summary.json` in the same folder.

    python benchmarks/summarize.py outputs/benchmarks/gpu

A part whose JSON is missing (it failed or ran out of time) shows as "missing" in its rows.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch


sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import device_name, peak_flops, print_table, resolve_device, synchronize, write_results  # noqa: E402

from modeling_bridge.hub_utils import run_command  # noqa: E402


def matmul_ceiling(device: torch.device) -> dict:
    """Median FLOP/s of a large random matrix product: bf16 8192^3 on a GPU, float32 1024^3 on CPU (a smoke run)."""
    size, dtype, repeats = (8192, torch.bfloat16, 10) if device.type == "cuda" else (1024, torch.float32, 3)
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=g).to(device, dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        times.append(time.perf_counter() - start)
    return {
        "size": size,
        "dtype": str(dtype).removeprefix("torch."),
        "flops_per_s": 2 * size**3 / statistics.median(times),
    }


def load(folder: Path, name: str) -> dict | None:
    path = folder / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def rows_of(table: list[dict], key: str) -> dict:
    return {row[key]: row for row in table}


def targets(results: dict, on_gpu: bool, ceiling: float) -> list[dict]:
    """One row per target: what was measured, the goal, whether it is met (None where nothing was measured or the
    goal does not apply here, "missing" where the part has no results). The two MFU rows also give the achieved
    FLOP/s as a fraction of `ceiling`, the measured matrix-product rate (FLOP/s): on CPU, where no MFU is defined, too.
    """
    rows = []

    def add(target, part, measure, goal, at_least=True, achieved=None):
        met = None if measure is None or goal is None else (measure >= goal if at_least else measure <= goal)
        rows.append({
            "target": target, "part": part, "measured": measure,
            "goal": None if goal is None else f"{'>=' if at_least else '<='} {goal}",
            "met": "missing" if results.get(part) is None else met,
            "x measured GEMM rate": None if achieved is None else achieved / ceiling,
        })  # fmt: skip

    zero_shot = results.get("zero_shot")
    unimodal = rows_of(zero_shot["unimodal"], "measure") if zero_shot else {}
    methods = rows_of(zero_shot["zero_shot"], "method") if zero_shot else {}
    for kind in ("image", "text"):
        row = unimodal.get(f"unimodal {kind} embeddings")
        add(f"unimodal {kind} throughput, x CLIP", "zero_shot", row and row["bridge / clip"], 0.95 if on_gpu else 1.0)
    row = methods.get("bridge two-stage k=32")
    add("two-stage k=32 time, x CLIP unimodal", "zero_shot", row and row["x clip unimodal"], 1.5, at_least=False)
    speedup = zero_shot and zero_shot["exact_fused_speedup_over_per_pair"]
    add("exact fused over per-pair calls, x", "zero_shot", speedup, 4.5)

    sweep = [
        row for part in ("pairwise", "pairwise_compiled") for row in (results.get(part) or {}).get("chunk_sweep", [])
    ]
    best = max(sweep, key=lambda row: row["TFLOP/s"], default=None)  # the best chunk size, eager or compiled
    add("fused scoring MFU (best chunk, eager or compiled)", "pairwise", best and best["MFU"], 0.5 if on_gpu else None,
        achieved=best and best["TFLOP/s"] * 1e12)  # fmt: skip

    steps = rows_of(results["training"]["steps"], "variant") if results.get("training") else {}
    stage_c, stage_a = steps.get("stage C"), steps.get("stage A")
    add("stage C training MFU", "training", stage_c and stage_c["MFU"], 0.4 if on_gpu else None,
        achieved=stage_c and stage_c["TFLOP/s"] * 1e12)  # fmt: skip
    add("stage A samples/s, x stage C", "training", stage_a and stage_a["x stage C"], 2.0)
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        raise FileNotFoundError(
            f"{args.folder} is not a folder; give the folder benchmarks/gpu_suite.sh wrote its results to."
        )
    device = resolve_device(args.device)
    results = {name: load(args.folder, name) for name in ("zero_shot", "pairwise", "pairwise_compiled", "training")}
    peak, ceiling = peak_flops(device), matmul_ceiling(device)
    rows = targets(results, device.type == "cuda", ceiling["flops_per_s"])
    print(
        f"\n{device_name(device)}: datasheet bf16 peak {peak or '-'} FLOP/s, measured {ceiling['dtype']} "
        f"{ceiling['size']}^3 matrix product {ceiling['flops_per_s'] / 1e12:.2f} TFLOP/s"
    )
    print_table(rows, ["target", "measured", "goal", "met", "x measured GEMM rate"])
    payload = {"device": device_name(device), "peak_flops": peak, "matmul": ceiling, "targets": rows}
    write_results(str(args.folder / "summary.json"), payload)
    return payload


if __name__ == "__main__":
    sys.exit(run_command(main))
