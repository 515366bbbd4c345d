"""Fused scoring of N images x M texts: BridgeModel.forward (towers once per image and per text, layer-1
projections once, pairs in chunks) against running the model on each pair separately (towers N*M times).

Both run side by side in one process on the same inputs; the script checks that they give the same scores and prints
the time ratio (absolute CPU times on a shared machine are noise).

    python benchmarks/pairwise_scoring.py [--n_images 16 --n_texts 16 --repeats 3]
"""

import argparse
import time
from pathlib import Path

import torch

from modeling_bridge import BridgeConfig, BridgeModel


ROOT = Path(__file__).resolve().parents[1]


def best_time(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


@torch.no_grad()
def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configuration" / "bridge-tiny.json"))
    parser.add_argument("--n_images", type=int, default=16)
    parser.add_argument("--n_texts", type=int, default=16)
    parser.add_argument("--text_length", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    config = BridgeConfig.from_json_file(args.config)
    model = BridgeModel(config).eval()
    side = config.vision_config.image_size
    pixel_values = torch.randn(args.n_images, 3, side, side)
    input_ids = torch.randint(1000, 2000, (args.n_texts, args.text_length))

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

    torch.testing.assert_close(batched(), per_pair(), atol=1e-5, rtol=1e-5)
    t_batched, t_pairs = best_time(batched, args.repeats), best_time(per_pair, args.repeats)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, config {Path(args.config).name}, "
        f"{args.n_images} images x {args.n_texts} texts of {args.text_length} tokens"
    )
    print(
        f"per-pair model calls / BridgeModel.forward time ratio: {t_pairs / t_batched:.1f}x (same scores within 1e-5)"
    )


if __name__ == "__main__":
    main()
