"""Training-step throughput of BridgeForPreTraining (ITC + ITM, mined negatives) on CLIP-B/16-sized towers: stage C
(everything trainable) against stage A (towers frozen: their forward builds no autograd graph) and stage A from
cached tower states (`vision_hidden_state` / `text_hidden_state`: the towers do not run at all), each with gradient
checkpointing off and on. Samples/s, peak memory, FLOPs per step and, on a GPU, model FLOPs utilisation.

    python benchmarks/training_step.py                      # on a GPU: paper size, batch 128, bf16 autocast
    python benchmarks/training_step.py --regression         # tiny towers, CPU, batch 16: ratios only (seconds)

Random weights and inputs; every variant takes full AdamW steps on the same batch; variants alternate step by step
so that all see the same machine load. FLOPs are counted (`torch.utils.flop_counter`) on one forward + backward.
Results go to `--output` as JSON.
"""

import argparse
import copy
import sys

import torch

from modeling_bridge import BridgeForPreTraining
from modeling_bridge.command_line import check_int, check_ints, check_results_file
from modeling_bridge.hub_utils import run_command


sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import (  # noqa: E402
    SIZES,
    clip_bridge_config,
    count_flops,
    environment,
    mfu,
    parse_arguments,
    peak_memory,
    print_table,
    resolve_device,
    time_interleaved,
    write_results,
)


def make_batch(config, batch_size: int, length: int, device) -> dict:
    g = torch.Generator().manual_seed(0)
    side = config.vision_config.image_size
    vocab = config.text_config.vocab_size
    ids = torch.randint(1, vocab - 1, (batch_size, length), generator=g)
    ids[:, -1] = vocab - 1  # CLIP's text tower pools at the highest id (its end-of-text token)
    return {
        "pixel_values": torch.randn(batch_size, 3, side, side, generator=g).to(device),
        "input_ids": ids.to(device),
        "attention_mask": torch.ones_like(ids).to(device),
    }


def make_variant(base, stage: str, checkpointing: bool, compile_layers: bool):
    model = copy.deepcopy(base)
    if stage != "C":
        model.bridge.vision_model.requires_grad_(False)
        model.bridge.text_model.requires_grad_(False)
    if checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})
    if compile_layers:
        for layer in model.bridge.interaction_layers:
            layer.compile()
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    return model, optimizer


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["base", "tiny"], default="base")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None, help="default: on a GPU")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--text_length", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="torch.compile each interaction layer")
    parser.add_argument(
        "--num_hard_negatives", type=int, default=None, help="negatives mined per anchor (default: the config's, 3)"
    )
    parser.add_argument("--output", default=None, help="write the results here as JSON")
    args = parse_arguments(parser, argv, dict(size="tiny", device="cpu", batch_size=16, text_length=16))
    check_int(args.batch_size, "--batch_size", minimum=2)  # the contrastive losses need 2 pairs per step
    longest = SIZES[args.size]["text"]["max_position_embeddings"]
    check_int(args.text_length, "--text_length", maximum=longest, maximum_is="the text tower's positions")
    check_ints(args, "rounds")
    check_ints(args, "num_hard_negatives", optional=True)
    if args.output:
        check_results_file(args.output)
    device = resolve_device(args.device)
    if args.bf16 is None:
        args.bf16 = device.type == "cuda"
    env = environment(device, " ".join(sys.argv))
    print(f"{env}\nsize {args.size}, batch {args.batch_size}, bf16 autocast {args.bf16}")

    torch.manual_seed(0)
    overrides = {} if args.num_hard_negatives is None else {"num_hard_negatives": args.num_hard_negatives}
    base = BridgeForPreTraining(clip_bridge_config(args.size, **overrides)).to(device)
    print(f"{base.config.num_hard_negatives} negatives mined per anchor\n")
    batch = make_batch(base.config, args.batch_size, args.text_length, device)
    with torch.no_grad():
        states = {
            "vision_hidden_state": base.bridge.get_image_features(batch["pixel_values"]).last_hidden_state,
            "text_hidden_state": base.bridge.get_text_features(batch["input_ids"]).last_hidden_state,
        }
    cached_batch = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], **states}
    variants = {}
    for stage, inputs in (("C", batch), ("A", batch), ("A, cached states", cached_batch)):
        for checkpointing in (False, True):
            if stage.endswith("cached states") and checkpointing:
                continue  # nothing but the interaction stack runs; checkpointing it is the row above's only cost
            name = f"stage {stage}{', checkpointing' if checkpointing else ''}"
            variants[name] = (*make_variant(base, stage[0], checkpointing, args.compile), inputs)
    del base

    def step(model, optimizer, inputs):
        def run():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
                loss = model(**inputs).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return run

    steps = {name: step(*parts) for name, parts in variants.items()}
    times = time_interleaved(steps, device, args.rounds)
    rows = []
    for name, (model, _, inputs) in variants.items():
        with peak_memory(device) as peak:
            steps[name]()

        def forward_backward(model=model, inputs=inputs):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
                loss = model(**inputs).loss
            loss.backward()
            model.zero_grad(set_to_none=True)

        flops = count_flops(forward_backward)
        rows.append(
            {
                "variant": name,
                "samples/s": args.batch_size / times[name],
                "x stage C": times["stage C"] / times[name],
                "GFLOP / step": flops / 1e9,
                "TFLOP/s": flops / times[name] / 1e12,
                "MFU": mfu(flops, times[name], device),
                "peak MiB": peak["peak_mib"],
            }
        )
    print_table(rows, list(rows[0]))
    payload = {"environment": env, "arguments": vars(args), "steps": rows}
    write_results(args.output, payload)
    return payload


if __name__ == "__main__":
    sys.exit(run_command(main))
