"""Stage-A training throughput on CPU: BRIDGE (pairwise objective) vs a dual encoder of the same towers.

Both models are built as in the demo (a small from-scratch ViT and the pretrained MiniLM-L6), with the towers frozen as
in stage A (modeling_bridge/training/presets/stage_a.json), and take full optimiser steps on the same collated batch of
bridge-shapes pairs. Steps alternate between the two models so that both see the same machine load; the ratio of their
median samples/s is the figure to compare (absolute CPU times on a shared machine are noise).

    python benchmarks/training_throughput.py [--batch_size 48] [--rounds 12] [--num_hard_negatives 3]
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, ViTImageProcessor


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import run_demo  # noqa: E402  (builds the demo's towers and models)

from modeling_bridge import BridgeProcessor  # noqa: E402
from modeling_bridge.data import BridgeDataCollator, load_bridge_shapes  # noqa: E402
from modeling_bridge.training import apply_training_stage, set_tower_trainable_blocks  # noqa: E402


def step_time(model, batch, optimizer) -> float:
    start = time.perf_counter()
    loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--num_hard_negatives", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    demo_args = run_demo.DemoArguments(num_hard_negatives=args.num_hard_negatives)
    text_path = run_demo.text_tower_path()
    bridge, baseline = run_demo.build_models(demo_args, text_path)
    apply_training_stage(bridge, "a")  # both towers frozen
    for tower in (baseline.vision_model, baseline.text_model):
        set_tower_trainable_blocks(tower, 0)
    processor = BridgeProcessor(
        image_processor=ViTImageProcessor(size={"height": 64, "width": 64}),
        tokenizer=AutoTokenizer.from_pretrained(text_path),
    )
    rows = load_bridge_shapes(num_train=args.batch_size)["train"]
    batch = BridgeDataCollator(processor, max_length=32)([rows[i] for i in range(args.batch_size)])
    runs = {
        "bridge": (bridge.train(), dict(batch)),
        "dual_encoder": (baseline.train(), {**batch, "return_loss": True}),
    }
    optimizers = {
        name: torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        for name, (model, _) in runs.items()
    }
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
        print(f"{name:<13} median {value:7.1f} samples/s")
    print(f"BRIDGE / dual encoder throughput ratio: {rate['bridge'] / rate['dual_encoder']:.2f}")


if __name__ == "__main__":
    main()
