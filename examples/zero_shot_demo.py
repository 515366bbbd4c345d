"""Build bridge-tiny, save model + processor, reload them through the Auto classes and classify generated images
with `pipeline("zero-shot-image-classification")`.

The model is untrained (random vision tower, random interaction layers), so its scores are close to uniform: this
demo shows the plumbing (config -> model -> save -> Auto reload -> pipeline), not accuracy.

    python examples/zero_shot_demo.py [--output_dir outputs/demo-core]
"""

import argparse
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from transformers import AutoModel, AutoProcessor, BertTokenizer, ViTImageProcessor, pipeline

import modeling_bridge  # noqa: F401  (registers BRIDGE with the Auto classes and the pipeline)
from modeling_bridge import BridgeConfig, BridgeModel, BridgeProcessor

ROOT = Path(__file__).resolve().parents[1]
COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220)}
SHAPES = ("circle", "square", "triangle")


def draw(color: str, shape: str, size: int = 96) -> Image.Image:
    image = Image.new("RGB", (size, size), (245, 245, 245))
    pen, box = ImageDraw.Draw(image), (size // 4, size // 4, 3 * size // 4, 3 * size // 4)
    if shape == "circle":
        pen.ellipse(box, fill=COLORS[color])
    elif shape == "square":
        pen.rectangle(box, fill=COLORS[color])
    else:
        pen.polygon([(size // 2, size // 4), (size // 4, 3 * size // 4), (3 * size // 4, 3 * size // 4)],
                    fill=COLORS[color])
    return image


def build_processor(config: BridgeConfig) -> BridgeProcessor:
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "this", "is", "a", "photo", "of", "."]
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(words + list(COLORS) + list(SHAPES))})
    side = config.vision_config.image_size
    return BridgeProcessor(ViTImageProcessor(size={"height": side, "width": side}), tokenizer)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/demo-core")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    config = BridgeConfig.from_json_file(ROOT / "configuration" / "bridge-tiny.json")
    model, processor = BridgeModel(config), build_processor(config)
    print(f"bridge-tiny: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
          f"{config.num_interaction_layers} interaction layers, default score {config.default_score!r}")
    model.save_pretrained(args.output_dir)
    processor.save_pretrained(args.output_dir)
    print(f"saved model + processor to {args.output_dir}")

    reloaded = AutoModel.from_pretrained(args.output_dir).eval()
    AutoProcessor.from_pretrained(args.output_dir)
    print(f"reloaded with AutoModel -> {type(reloaded).__name__}")

    classifier = pipeline("zero-shot-image-classification", model=args.output_dir)
    labels = [f"{c} {s}" for c in COLORS for s in SHAPES]
    for color, shape in [("red", "circle"), ("blue", "square"), ("green", "triangle")]:
        result = classifier(draw(color, shape), candidate_labels=labels)
        top = ", ".join(f"{r['label']} {r['score']:.3f}" for r in result[:3])
        print(f"image of a {color} {shape:<8} -> {top}")
    print("(untrained model: scores near 1/9 are expected)")


if __name__ == "__main__":
    main()
