"""BRIDGE on CLIP-B/16's own towers against `CLIPModel` with the same weights: unimodal embedding throughput, and
zero-shot classification of images against a label set (1000 by default) by unimodal scores, exact fused scoring of
every (image, label) pair, two-stage (unimodal top-k, fused re-rank of the k) and, as the original code's only exact
path, one full model call per pair.

    python benchmarks/zero_shot_speed.py                          # on a GPU: paper size, bf16 autocast
    python benchmarks/zero_shot_speed.py --regression             # tiny towers, CPU, ratios only (seconds)
    python benchmarks/zero_shot_speed.py --size base --num_labels 1000 --num_images 1 --device cpu
    python benchmarks/zero_shot_speed.py --regression --model_name_or_path outputs/demo/bridge   # + accuracy

Random weights (speed does not depend on them); all variants run side by side in one process, interleaved. The
labels' tower states and unimodal embeddings are computed once per label set (as the zero-shot pipeline and any
serving setup do) and not timed; what is timed per image is its tower and its scoring against the labels. Per-pair
full calls are timed on `--per_pair_labels` labels and scaled to the label set (each pair's cost is the same by
construction). With `--model_name_or_path` (a trained BRIDGE folder, e.g. `make demo`'s), the script also reports
the zero-shot accuracy of each method on bridge-shapes' held-out split (its test images against all its captions).
Results go to `--output` as JSON.
"""

import argparse
import sys

import torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPModel

from modeling_bridge import BridgeModel
from modeling_bridge.command_line import check_int, check_ints, check_results_file, parse_int_list
from modeling_bridge.hub_utils import check_model_path, explain_load_error, run_command


sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import (  # noqa: E402
    SIZES,
    clip_bridge_config,
    count_flops,
    environment,
    parse_arguments,
    peak_memory,
    print_table,
    resolve_device,
    time_interleaved,
    write_results,
)


def build_models(size: str, device, dtype=torch.float32) -> tuple[CLIPModel, BridgeModel]:
    """A random CLIPModel and a BridgeModel whose towers hold the same weights."""
    config = clip_bridge_config(size, interaction_dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(0)
    clip = CLIPModel(CLIPConfig(text_config=config.text_config.to_dict(), vision_config=config.vision_config.to_dict(),
                                projection_dim=SIZES[size]["projection_dim"]))  # fmt: skip
    bridge = BridgeModel(config)
    bridge.vision_model.load_state_dict(clip.vision_model.state_dict())
    bridge.text_model.load_state_dict(clip.text_model.state_dict())
    return clip.to(device, dtype).eval(), bridge.to(device, dtype).eval()


@torch.no_grad()
def zero_shot_scores(bridge, vision_states, image_embeds, labels: dict, k: int | None) -> torch.Tensor:
    """(n_images, n_labels) scores: unimodal (k=None), exact fused (k >= number of labels), or fused for each image's
    unimodal top k and the unimodal score minus a constant below every fused score elsewhere (so the top k rank first
    and keep their fused order)."""
    unimodal = image_embeds @ labels["embeds"].t()
    n_images, n_labels = unimodal.shape
    if k is None:
        return unimodal
    if k >= n_labels:
        return bridge.pairwise_interaction(vision_states, labels["states"], labels["mask"]).fused_logits
    top = unimodal.topk(k, dim=-1).indices
    image_index = torch.arange(n_images, device=top.device).repeat_interleave(k)
    fused = bridge.interact(vision_states, labels["states"], labels["mask"], image_index, top.flatten()).fused_logits
    below = unimodal - unimodal.max() + fused.min() - 1.0  # every entry under the lowest fused score
    return below.scatter(1, top, fused.view(n_images, k).to(unimodal.dtype))


@torch.no_grad()
def encode_labels(bridge, input_ids, attention_mask, batch_size: int = 256) -> dict:
    parts = [
        bridge.get_text_features(input_ids[i : i + batch_size], attention_mask[i : i + batch_size])
        for i in range(0, input_ids.shape[0], batch_size)
    ]
    return {
        "states": torch.cat([p.last_hidden_state for p in parts]),
        "embeds": torch.cat([p.pooler_output for p in parts]),
        "mask": attention_mask,
    }


def random_labels(n: int, length: int, vocab: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` label texts of 4 to `length` tokens, right-padded (CLIP's text tower pools at the highest id: the last
    real token is given the largest id, as CLIP's end-of-text token is)."""
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(4, length + 1, (n,), generator=g)
    ids = torch.randint(1, vocab - 2, (n, length), generator=g)
    mask = (torch.arange(length)[None] < lengths[:, None]).long()
    ids = ids * mask
    ids[torch.arange(n), lengths - 1] = vocab - 1
    return ids.to(device), mask.to(device)


def speed(args, device) -> dict:
    clip, bridge = build_models(args.size, device)
    if args.pair_chunk_size:
        bridge.config.pair_chunk_size = args.pair_chunk_size
    if args.compile:
        for layer in bridge.interaction_layers:
            layer.compile()
    vision = bridge.config.vision_config
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(args.batch_size, 3, vision.image_size, vision.image_size, generator=g).to(device)
    vocab = bridge.config.text_config.vocab_size
    ids, mask = random_labels(args.num_labels, args.label_length, vocab, device)
    batch_ids, batch_mask = ids[: args.batch_size], mask[: args.batch_size]
    rows, results = [], {}

    with torch.no_grad(), autocast:
        # 1. unimodal embedding throughput, identical towers
        t = time_interleaved(
            {
                "clip image": lambda: clip.get_image_features(pixel_values=pixels),
                "bridge image": lambda: bridge.get_image_features(pixels),
                "clip text": lambda: clip.get_text_features(input_ids=batch_ids, attention_mask=batch_mask),
                "bridge text": lambda: bridge.get_text_features(batch_ids, batch_mask),
            },
            device,
            args.rounds,
        )
        for part in ("image", "text"):
            rows.append({"measure": f"unimodal {part} embeddings", "clip /s": args.batch_size / t[f"clip {part}"],
                         "bridge /s": args.batch_size / t[f"bridge {part}"],
                         "bridge / clip": t[f"clip {part}"] / t[f"bridge {part}"]})  # fmt: skip
        results["unimodal"] = rows[-2:]

        # 2. zero-shot: label set encoded once; per image, its tower and its scoring against every label
        labels = encode_labels(bridge, ids, mask)
        clip_labels = F.normalize(torch.cat(
            [clip.get_text_features(input_ids=ids[i : i + 256], attention_mask=mask[i : i + 256]).pooler_output
             for i in range(0, args.num_labels, 256)]
        ), dim=-1)  # fmt: skip
        images = pixels[: args.num_images]

        def clip_zero_shot():
            embeds = F.normalize(clip.get_image_features(pixel_values=images).pooler_output, dim=-1)
            return (embeds @ clip_labels.t()).argmax(-1)

        def bridge_zero_shot(k):
            def run():
                out = bridge.get_image_features(images)
                return zero_shot_scores(bridge, out.last_hidden_state, out.pooler_output, labels, k).argmax(-1)

            return run

        variants = {"clip unimodal": clip_zero_shot, "bridge unimodal": bridge_zero_shot(None)}
        for k in args.k:
            if k < args.num_labels:
                variants[f"bridge two-stage k={k}"] = bridge_zero_shot(k)
        variants["bridge exact fused"] = bridge_zero_shot(args.num_labels)
        per_pair_ids, per_pair_mask = ids[: args.per_pair_labels], mask[: args.per_pair_labels]

        def per_pair():  # one full model call per (image, label) pair, the labels' towers included
            for i in range(images.shape[0]):
                for j in range(per_pair_ids.shape[0]):
                    bridge(input_ids=per_pair_ids[j : j + 1], pixel_values=images[i : i + 1],
                           attention_mask=per_pair_mask[j : j + 1], score="fused")  # fmt: skip

        variants["per-pair full calls"] = per_pair
        times = time_interleaved(variants, device, args.zero_shot_rounds)
        times["per-pair full calls"] *= args.num_labels / args.per_pair_labels
        memory, flops = {}, {}
        for name, fn in variants.items():
            with peak_memory(device) as peak:
                fn()
            memory[name] = peak["peak_mib"]
            flops[name] = count_flops(fn)
        flops["per-pair full calls"] *= args.num_labels / args.per_pair_labels
        clip_time = times["clip unimodal"]
        zero_shot = []
        for name, seconds in times.items():
            zero_shot.append(
                {
                    "method": name,
                    "ms / image": 1000 * seconds / images.shape[0],
                    "x clip unimodal": seconds / clip_time,
                    "GFLOP / image": flops[name] / images.shape[0] / 1e9,
                    "x clip FLOPs": flops[name] / flops["clip unimodal"],
                    "peak MiB": memory[name],
                }
            )
        results["zero_shot"] = zero_shot
        results["exact_fused_speedup_over_per_pair"] = times["per-pair full calls"] / times["bridge exact fused"]

    print_table(rows, ["measure", "clip /s", "bridge /s", "bridge / clip"])
    print(f"\nzero-shot, {images.shape[0]} image(s) x {args.num_labels} labels (per-pair calls: timed on "
          f"{args.per_pair_labels} labels, scaled)")  # fmt: skip
    print_table(results["zero_shot"], list(results["zero_shot"][0]))
    print(f"exact fused / per-pair full calls: {results['exact_fused_speedup_over_per_pair']:.1f}x faster")
    return results


@torch.no_grad()
def accuracy(args, device) -> dict:
    """Zero-shot accuracy of each method with a trained model on bridge-shapes' held-out split."""
    from transformers import AutoModel, AutoProcessor

    import modeling_bridge  # noqa: F401  (registers BRIDGE with the Auto classes)
    from modeling_bridge.data import load_bridge_shapes

    try:
        model = AutoModel.from_pretrained(args.model_name_or_path).to(device).eval()
        processor = AutoProcessor.from_pretrained(args.model_name_or_path)
    except OSError as error:
        raise explain_load_error(args.model_name_or_path, "model", error) from None
    test = load_bridge_shapes(num_train=16)["test"]
    names = test.features["label"].names
    text = processor(text=names, padding=True, return_tensors="pt").to(device)
    labels = encode_labels(model, text["input_ids"], text["attention_mask"])
    pixels = processor(images=list(test["image"]), return_tensors="pt")["pixel_values"].to(device)
    target = torch.tensor(test["label"], device=device)
    correct = {}
    for start in range(0, len(test), 32):
        out = model.get_image_features(pixels[start : start + 32])
        for k in (None, *args.k, len(names)):
            name = "unimodal" if k is None else "exact fused" if k >= len(names) else f"two-stage k={k}"
            scores = zero_shot_scores(model, out.last_hidden_state, out.pooler_output, labels, k)
            hits = (scores.argmax(-1) == target[start : start + 32]).sum().item()
            correct[name] = correct.get(name, 0) + hits
    result = {name: hits / len(test) for name, hits in correct.items()}
    print(f"\nzero-shot accuracy, bridge-shapes held-out split ({len(test)} images x {len(names)} captions)")
    print_table([{"method": n, "accuracy": a} for n, a in result.items()], ["method", "accuracy"])
    return result


def check_arguments(args) -> None:
    """Every argument's range, before any model is built (`--k` becomes a list of ints)."""
    check_ints(args, "batch_size", "num_labels", "rounds", "zero_shot_rounds")
    check_ints(args, "pair_chunk_size", optional=True)
    longest = SIZES[args.size]["text"]["max_position_embeddings"]
    check_int(args.label_length, "--label_length", minimum=4, maximum=longest, maximum_is="the text tower's positions")
    check_int(args.num_images, "--num_images", maximum=args.batch_size, maximum_is="--batch_size")
    check_int(args.per_pair_labels, "--per_pair_labels", maximum=args.num_labels, maximum_is="--num_labels")
    args.k = parse_int_list(args.k, "--k")
    inputs = {}
    if args.model_name_or_path:
        check_model_path(args.model_name_or_path)
        inputs[args.model_name_or_path] = "the model folder (--model_name_or_path)"
    if args.output:
        check_results_file(args.output, inputs=inputs)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="base")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                        help="bf16 autocast (default: on a GPU)")  # fmt: skip
    parser.add_argument("--batch_size", type=int, default=64, help="images / texts per unimodal batch")
    parser.add_argument("--num_labels", type=int, default=1000)
    parser.add_argument("--label_length", type=int, default=16, help="tokens per label text, at most")
    parser.add_argument("--num_images", type=int, default=8, help="images per zero-shot call")
    parser.add_argument("--k", default="8,32,128", help="two-stage candidates to re-rank, comma-separated")
    parser.add_argument("--per_pair_labels", type=int, default=16)
    parser.add_argument("--pair_chunk_size", type=int, default=None, help="pairs per interaction pass (config's)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--zero_shot_rounds", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="torch.compile each interaction layer")
    parser.add_argument("--model_name_or_path", default=None, help="a trained BRIDGE folder: also report accuracy")
    parser.add_argument("--output", default=None, help="write the results here as JSON")
    args = parse_arguments(
        parser, argv, dict(size="tiny", device="cpu", batch_size=16, num_images=2, num_labels=256, per_pair_labels=8)
    )
    check_arguments(args)
    device = resolve_device(args.device)
    if args.bf16 is None:
        args.bf16 = device.type == "cuda"
    payload = {"environment": environment(device, " ".join(sys.argv)), "arguments": vars(args)}
    print(f"{payload['environment']}\nsize {args.size}, bf16 autocast {args.bf16}\n")
    payload.update(speed(args, device))
    if args.model_name_or_path:
        payload["accuracy"] = accuracy(args, device)
    write_results(args.output, payload)
    return payload


if __name__ == "__main__":
    sys.exit(run_command(main))
