#!/usr/bin/env python
"""Convert a checkpoint of the original BRIDGE code (github.com/jfeinashley/BRIDGE) to a folder that
`AutoModel.from_pretrained` loads (and, with --push_to_hub, upload it).

    python conversion/convert_original_checkpoint.py --checkpoint checkpoint_best.pth --config configs/coco_base.yaml \
        --output_dir bridge-coco-base [--vision_model DIR] [--text_model DIR] [--push_to_hub user/bridge-coco-base]

The towers' configs, tokenizer and image processor come from the YAML's `model_name` entries (relative paths are
resolved against the YAML's folder) unless --vision_model / --text_model name other folders or Hub ids; every
weight comes from the checkpoint. Unknown, missing or mis-shaped keys stop the conversion, named as the checkpoint
names them.
"""

import argparse
import sys

from modeling_bridge.command_line import check_hub_output_dir
from modeling_bridge.hub_utils import add_hub_arguments, check_upload_possible, publish, run_command
from modeling_bridge.original_checkpoint import check_model_source, convert_original_checkpoint


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--checkpoint", required=True, help=".pth of the original code ({'model': ...} or a state dict)"
    )
    parser.add_argument("--config", help="its training YAML (default: the config stored in the checkpoint)")
    parser.add_argument("--output_dir", required=True, help="folder to write the converted model to")
    parser.add_argument("--vision_model", help="vision tower config/image processor: folder or Hub id (default: YAML)")
    parser.add_argument("--text_model", help="text tower config/tokenizer: folder or Hub id (default: YAML)")
    add_hub_arguments(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    check_upload_possible(args)
    for flag in ("vision_model", "text_model"):  # before reading the checkpoint, which may be large
        if getattr(args, flag) is not None:
            setattr(args, flag, check_model_source(getattr(args, flag), f"--{flag}"))
    check_hub_output_dir(args)
    model, processor, parsed = convert_original_checkpoint(
        args.checkpoint, args.config, args.vision_model, args.text_model
    )
    description = (
        f"Converted from a checkpoint of the original BRIDGE code ({parsed.vision_source} + {parsed.text_source}). "
        'It pools the fused embeddings from the last layer\'s input (`cross_embed_source="layer_input"`), as the '
        "original does; unlike the original, padded text tokens are masked in the interaction layers, so the two "
        "agree on unpadded text."
    )
    publish(model, processor, args, base_models=parsed.base_models, description=description)


if __name__ == "__main__":
    sys.exit(run_command(main))
