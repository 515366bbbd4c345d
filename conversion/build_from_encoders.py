#!/usr/bin/env python
"""Build a new BRIDGE model around two pretrained towers and write it as a Hub-ready folder (optionally uploading it).

    python conversion/build_from_encoders.py --vision_model google/vit-base-patch16-224-in21k \
        --text_model bert-base-uncased --output_dir bridge-base --num_interaction_layers 6 --shared_dim 768

Vision towers: ViT, CLIP / SigLIP (vision-only or full dual-encoder checkpoints, whose vision part is taken),
DINOv2, ...; text towers: BERT, RoBERTa, MiniLM, .... The towers keep their weights; the interaction layers and heads
are newly initialised, to be trained (see examples/). The processor pairs the vision tower's image processor with
the text tower's tokenizer.
"""

import argparse
import json
import sys

from modeling_bridge import BridgeModel, BridgeProcessor
from modeling_bridge.command_line import check_hub_output_dir, check_ints
from modeling_bridge.hub_utils import add_hub_arguments, check_upload_possible, publish, run_command
from modeling_bridge.original_checkpoint import check_model_source


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vision_model", required=True, help="vision tower: folder or Hub id")
    parser.add_argument("--text_model", required=True, help="text tower: folder or Hub id")
    parser.add_argument("--output_dir", required=True, help="folder to write the model to")
    parser.add_argument("--num_interaction_layers", type=int)
    parser.add_argument("--shared_dim", type=int)
    parser.add_argument("--num_interaction_heads", type=int)
    parser.add_argument("--projection_dim", type=int)
    parser.add_argument(
        "--config_overrides",
        type=json.loads,
        default={},
        help='other BridgeConfig fields as JSON, e.g. \'{"pooling": "cls"}\'',
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the new layers' initialisation")
    add_hub_arguments(parser)
    return parser.parse_args(argv)


def main(argv=None):
    import torch

    args = parse_args(argv)
    check_upload_possible(args)
    # A path that does not exist would otherwise reach transformers as a malformed Hub id.
    args.vision_model = check_model_source(args.vision_model, "--vision_model")
    args.text_model = check_model_source(args.text_model, "--text_model")
    check_ints(args, "num_interaction_layers", "shared_dim", "num_interaction_heads", "projection_dim", optional=True)
    if not isinstance(args.config_overrides, dict):
        raise ValueError(
            '--config_overrides must be a JSON object of BridgeConfig fields, e.g. \'{"pooling": "cls"}\'; got '
            f"{json.dumps(args.config_overrides)}."
        )
    check_hub_output_dir(args)
    fields = {
        k: getattr(args, k)
        for k in ("num_interaction_layers", "shared_dim", "num_interaction_heads", "projection_dim")
        if getattr(args, k) is not None
    }
    fields.update(args.config_overrides)
    torch.manual_seed(args.seed)
    model = BridgeModel.from_vision_text_pretrained(args.vision_model, args.text_model, **fields)
    processor = BridgeProcessor.from_vision_text_pretrained(args.vision_model, args.text_model)
    description = (
        f"Built from the pretrained towers `{args.vision_model}` and `{args.text_model}`: the interaction layers and "
        "heads are newly initialised and must be trained before the fused scores mean anything."
    )
    publish(model, processor, args, base_models=[args.vision_model, args.text_model], description=description)


if __name__ == "__main__":
    sys.exit(run_command(main))
