"""Stage-A training throughput on CPU: BRIDGE (pairwise objective) vs the dual encoder of the same frozen towers, each
on raw inputs (the frozen towers run every step) and on cached tower states (`cache_tower_states`).

The models are the demo's (`examples/run_demo.py`: a small ResNet tower, here randomly initialised, and the pretrained
MiniLM-L6), both towers frozen, taking full optimiser steps on the same batch of bridge-shapes pairs. The four
variants alternate step by step so that all see the same machine load; the ratios of their median samples/s are the
figures to compare (absolute CPU times on a shared machine are noise).

    python benchmarks/training_throughput.py [--batch_size 48] [--rounds 12] [--num_hard_negatives 3]
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import ResNetConfig, ResNetModel


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import run_demo  # noqa: E402  (builds the demo's towers and models)

from modeling_bridge.command_line import check_int, check_ints  # noqa: E402
from modeling_bridge.data import BridgeDataCollator, load_bridge_shapes  # noqa: E402
from modeling_bridge.hub_utils import run_command  # noqa: E402
from modeling_bridge.training import TowerStateCollator, cache_tower_states  # noqa: E402


def step_time(model, batch, optimizer) -> float:
    start = time.perf_counter()
    loss = model(**batch)["loss"]
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--num_hard_negatives", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    check_int(args.batch_size, "--batch_size", minimum=2)  # the contrastive losses need 2 pairs per step
    check_ints(args, "rounds", "num_hard_negatives")
    check_ints(args, "threads", optional=True)
    if args.threads:
        torch.set_num_threads(args.threads)

    demo_args = run_demo.DemoArguments(num_hard_negatives=args.num_hard_negatives)
    text_path = run_demo.text_tower_path()
    processor = run_demo.make_processor(text_path)
    rows = load_bridge_shapes(num_train=args.batch_size)["train"]
    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(0)
        ResNetModel(ResNetConfig(**run_demo.TOWER_CONFIG)).save_pretrained(f"{folder}/tower")
        bridge, dual = run_demo.build_models(demo_args, f"{folder}/tower", text_path)  # towers frozen (blocks 0)
        states = cache_tower_states(bridge, rows, processor, f"{folder}/states", progress=False)
        cached = TowerStateCollator()([states[i] for i in range(args.batch_size)])
    raw = BridgeDataCollator(processor, max_length=run_demo.MAX_TEXT_LENGTH)([rows[i] for i in range(args.batch_size)])
    runs = {
        "bridge, raw inputs": (bridge, dict(raw)),
        "bridge, cached states": (bridge, cached),
        "dual encoder, raw inputs": (dual, dict(raw)),
        "dual encoder, cached states": (dual, cached),
    }
    optimizers = {
        name: torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        for name, (model, _) in runs.items()
    }
    bridge.train()
    dual.train()
    times = {name: [] for name in runs}
    for round_index in range(args.rounds + 2):
        for name, (model, inputs) in runs.items():
            elapsed = step_time(model, inputs, optimizers[name])
            if round_index >= 2:  # the first two rounds warm up allocators and kernels
                times[name].append(elapsed)
    rate = {name: args.batch_size / statistics.median(values) for name, values in times.items()}
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
        f"{args.rounds} alternating rounds, k={args.num_hard_negatives} mined negatives per anchor"
    )
    for name, value in rate.items():
        print(f"{name:<28} median {value:8.1f} samples/s")
    print(f"BRIDGE cached / raw: {rate['bridge, cached states'] / rate['bridge, raw inputs']:.2f}")
    print(f"dual encoder cached / raw: {rate['dual encoder, cached states'] / rate['dual encoder, raw inputs']:.2f}")
    print(f"BRIDGE / dual encoder, cached: {rate['bridge, cached states'] / rate['dual encoder, cached states']:.2f}")
    print(f"BRIDGE / dual encoder, raw: {rate['bridge, raw inputs'] / rate['dual encoder, raw inputs']:.2f}")


if __name__ == "__main__":
    sys.exit(run_command(main))
