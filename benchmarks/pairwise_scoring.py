"""Exact fused scoring of N images x M texts.

1. `BridgeModel.forward(score="fused")` (towers once per image and per text, layer-1 projections once, pairs in
   chunks) against one full model call per pair (towers N*M times, the original code's only exact path); the script
   checks that both give the same scores and prints the time ratio.
2. The interaction on already-encoded images and texts (`pairwise_interaction`), pairs/s and peak memory as
   `pair_chunk_size` varies, with FLOPs per pair and, on a GPU, model FLOPs utilisation.

    python benchmarks/pairwise_scoring.py                                  # bridge-tiny, 16 x 16 (CPU)
    python benchmarks/pairwise_scoring.py --size base --n_images 64 --n_texts 64 --chunk_sizes 64,256,1024,4096
    python benchmarks/pairwise_scoring.py --regression                     # seconds, ratios only

Everything runs side by side in one process on the same inputs (absolute CPU times on a shared machine are noise);
`--size base` is bridge-base on CLIP-B/16-sized towers (bf16 autocast on a GPU). Results go to `--output` as JSON.
"""

import argparse
import sys
from pathlib import Path

import torch

from modeling_bridge import BridgeConfig, BridgeModel
from modeling_bridge.command_line import check_int, check_ints, check_results_file, parse_int_list
from modeling_bridge.hub_utils import run_command


sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    clip_bridge_config,
    count_flops,
    environment,
    mfu,
    parse_arguments,
    peak_memory,
    print_table,
    resolve_device,
    time_call,
    write_results,
)


ROOT = Path(__file__).resolve().parents[1]


def random_inputs(config, n_images: int, n_texts: int, length: int, device):
    g = torch.Generator().manual_seed(0)
    side = config.vision_config.image_size
    vocab = config.text_config.vocab_size
    input_ids = torch.randint(1, vocab - 1, (n_texts, length), generator=g)
    input_ids[:, -1] = vocab - 1  # a CLIP text tower pools at the highest id (its end-of-text token)
    return torch.randn(n_images, 3, side, side, generator=g).to(device), input_ids.to(device)


def load_config(path: str) -> BridgeConfig:
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"--config {path} does not exist or is not a file; give a BridgeConfig JSON (e.g. "
            "configuration/bridge-tiny.json), or --size base / tiny."
        )
    try:
        return BridgeConfig.from_json_file(path)
    except (TypeError, ValueError, OSError) as error:
        raise ValueError(f"--config {path}: {' '.join(str(error).split())}") from None


@torch.no_grad()
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configuration" / "bridge-tiny.json"))
    parser.add_argument("--size", choices=["base", "tiny"], default=None, help="BRIDGE on CLIP towers instead")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None, help="default: on a GPU")
    parser.add_argument("--n_images", type=int, default=16)
    parser.add_argument("--n_texts", type=int, default=16)
    parser.add_argument("--text_length", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk_sizes", default="16,64,256", help="pair_chunk_size values, comma-separated")
    parser.add_argument("--skip_per_pair", action="store_true", help="skip part 1 (slow at paper size)")
    parser.add_argument("--compile", action="store_true", help="torch.compile each interaction layer")
    parser.add_argument("--output", default=None, help="write the results here as JSON")
    args = parse_arguments(parser, argv, dict(size=None, device="cpu", n_images=6, n_texts=6, chunk_sizes="8,64"))
    check_ints(args, "n_images", "n_texts", "repeats")
    args.chunk_sizes = parse_int_list(args.chunk_sizes, "--chunk_sizes")
    if args.output:
        check_results_file(args.output)
    device = resolve_device(args.device)
    if args.bf16 is None:
        args.bf16 = device.type == "cuda"
    if args.size:
        config = clip_bridge_config(args.size)
    else:
        config = load_config(args.config)
    longest = config.max_text_positions
    check_int(args.text_length, "--text_length", maximum=longest, maximum_is="the model's max_text_positions")
    torch.manual_seed(0)
    model = BridgeModel(config).to(device).eval()
    if args.compile:
        for layer in model.interaction_layers:
            layer.compile()
    pixel_values, input_ids = random_inputs(config, args.n_images, args.n_texts, args.text_length, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)
    env = environment(device, " ".join(sys.argv))
    print(f"{env}\n{args.n_images} images x {args.n_texts} texts of {args.text_length} tokens, bf16 {args.bf16}\n")
    payload = {"environment": env, "arguments": vars(args)}

    if not args.skip_per_pair:

        def batched():
            return model(input_ids=input_ids, pixel_values=pixel_values, score="fused").logits_per_image

        def per_pair():
            return torch.stack(
                [
                    torch.cat(
                        [
                            model(
                                input_ids=input_ids[j : j + 1], pixel_values=pixel_values[i : i + 1], score="fused"
                            ).logits_per_image[0]
                            for j in range(args.n_texts)
                        ]
                    )
                    for i in range(args.n_images)
                ]
            )

        with autocast:
            tolerance = 2e-2 if args.bf16 else 1e-5
            torch.testing.assert_close(batched(), per_pair(), atol=tolerance, rtol=tolerance)
            t_batched = time_call(batched, device, args.repeats)
            t_pairs = time_call(per_pair, device, args.repeats)
        payload["per_pair_over_batched"] = t_pairs / t_batched
        print(f"per-pair model calls / BridgeModel.forward: {t_pairs / t_batched:.1f}x (same scores, tol {tolerance})")

    with autocast:
        vision = model.get_image_features(pixel_values).last_hidden_state
        text = model.get_text_features(input_ids).last_hidden_state
    pairs = args.n_images * args.n_texts
    rows = []
    for chunk in args.chunk_sizes:

        def score(chunk=chunk):
            with autocast:
                model.config.pair_chunk_size = chunk
                return model.pairwise_interaction(vision, text).fused_logits

        seconds = time_call(score, device, args.repeats)
        with peak_memory(device) as peak:
            score()
        flops = count_flops(score)
        rows.append(
            {
                "pair_chunk_size": chunk,
                "pairs/s": pairs / seconds,
                "MFLOP / pair": flops / pairs / 1e6,
                "TFLOP/s": flops / seconds / 1e12,
                "MFU": mfu(flops, seconds, device),
                "peak MiB": peak["peak_mib"],
            }
        )
    print(f"\nfused scoring of encoded images and texts ({pairs} pairs)")
    print_table(rows, list(rows[0]))
    payload["chunk_sweep"] = rows
    write_results(args.output, payload)
    return payload


if __name__ == "__main__":
    sys.exit(run_command(main))
