#!/usr/bin/env python
"""Publish a saved BRIDGE model (e.g. a training output) to the Hub: rewrite it as a Hub-ready folder (sharded
safetensors, config with auto_map, the three code files, processor files, model card) and upload it in one commit.

    python conversion/push_to_hub.py --model_dir outputs/stage-c --output_dir hub/bridge-coco \\
        --push_to_hub user/bridge-coco
    python conversion/push_to_hub.py --model_dir outputs/stage-c --output_dir hub/bridge-coco --local_dir_only

--base_model names the towers' Hub ids for the card's metadata.
"""

import argparse
import json
import sys
from pathlib import Path

from modeling_bridge.command_line import check_hub_output_dir
from modeling_bridge.hub_utils import add_hub_arguments, check_upload_possible, publish, run_command


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True, help="folder written by BridgeModel.save_pretrained")
    parser.add_argument("--processor_dir", help="folder of the BridgeProcessor (default: --model_dir)")
    parser.add_argument("--output_dir", required=True, help="where to write the Hub-ready folder")
    parser.add_argument("--base_model", action="append", default=[], help="Hub id of a tower (repeatable)")
    parser.add_argument("--description", help="first paragraph of the model card")
    add_hub_arguments(parser)
    return parser.parse_args(argv)


def check_bridge_folder(model_dir: Path) -> None:
    """Refuse a folder that is not a saved BRIDGE model (e.g. a tower), saying what to run instead."""
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} holds no config.json; pass the folder of a saved BRIDGE model.")
    try:
        model_type = json.loads((model_dir / "config.json").read_text()).get("model_type")
    except (ValueError, AttributeError) as error:  # not JSON, or JSON that is not an object
        raise ValueError(
            f"{model_dir / 'config.json'} is not a readable model config ({error}); pass the folder "
            "of a saved BRIDGE model."
        ) from error
    if model_type != "bridge":
        raise ValueError(
            f"{model_dir} is not a BRIDGE model folder: its config.json has model_type {model_type!r}, not 'bridge'. "
            "To build a BRIDGE model around pretrained towers, run conversion/build_from_encoders.py --vision_model "
            "DIR --text_model DIR; for a checkpoint of the original BRIDGE code, run "
            "conversion/convert_original_checkpoint.py."
        )


def main(argv=None):
    from modeling_bridge import BridgeModel, BridgeProcessor

    args = parse_args(argv)
    check_upload_possible(args)
    model_dir = Path(args.model_dir)
    check_bridge_folder(model_dir)
    if Path(args.output_dir).resolve() == model_dir.resolve():
        raise ValueError("--output_dir must differ from --model_dir (the folder is rewritten, not edited in place).")
    if args.processor_dir and not Path(args.processor_dir).is_dir():
        raise FileNotFoundError(
            f"--processor_dir {args.processor_dir} is not a folder; give the folder the BridgeProcessor was saved to "
            "(default: --model_dir)."
        )
    check_hub_output_dir(args)
    model = BridgeModel.from_pretrained(model_dir)
    processor_dir = Path(args.processor_dir or model_dir)
    processor = (
        BridgeProcessor.from_pretrained(processor_dir) if (processor_dir / "processor_config.json").is_file() else None
    )
    publish(model, processor, args, base_models=args.base_model, description=args.description)


if __name__ == "__main__":
    sys.exit(run_command(main))
