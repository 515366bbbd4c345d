"""LangBridge across language models, offline: does an adapter trained with one LM work with another, untrained?

    python examples/run_langbridge.py --model_name_or_path outputs/demo/bridge --output_dir outputs/langbridge

Three small causal LMs (GPT-2 architecture) are trained here on the caption language of bridge-shapes only (every
caption the generator can write; text, no images), each with its own word-level tokenizer (the same words under
different ids), seed and width: A (`--width_a`), B (`--width_b`, another width) and C (A's width, other ids and seed).
The LMs' text is each caption after its scene read as words (a grid of one word per feature-map cell: an object's
colour and shape, alternately, on the cells it covers, "a" elsewhere, laid out as the caption says), 16 layouts per
caption, one example per row, the loss on the caption only: the form a LangBridge adapter can give an image, so that
such a prefix means something to the LMs (text only: no LM sees an image or an adapter while it is trained).
The BRIDGE model's vision states (its tower, frozen, in the first interaction layer's shared space) go through an
adapter into each LM, the LM frozen, followed by the end-of-text token; adapters are trained with the Trainer on the
captioning loss of the training images. Evaluated on the held-out bindings (the test split: colour-shape pairs never
seen with an image in training), greedy captions: exact match, and attribute accuracy (the fraction of the image's
objects named with their right colour and shape).

Conditions: A + LangBridge trained on A; B + that adapter transferred (`transfer_to`, no training); B + LangBridge
trained on B; C + the A adapter transferred; A + an MLP adapter (LLaVA-style) trained on A; C + that MLP adapter as
it is (same width; B's width differs, so the MLP adapter cannot even run there). Each LM is also given the test
scenes as words (`text_ceiling`: what it makes of a perfect reading, the most an adapter can reach). Writes
`results.json` and `top_words.png` (the word each region of a few test images reads as, through the A adapter).
Wrong input ends the run with one `error: ...` line.
"""

import copy
import math
import os
import sys
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModel,
    AutoProcessor,
    GPT2Config,
    GPT2LMHeadModel,
    HfArgumentParser,
    PreTrainedTokenizerFast,
    Trainer,
    TrainingArguments,
    default_data_collator,
)

import modeling_bridge  # noqa: F401  (registers BRIDGE with the Auto classes)
from modeling_bridge import BridgeForConditionalGeneration, BridgeGenerationProcessor, build_vocabulary_subset
from modeling_bridge.command_line import check_int, check_ints, check_number, check_results_folder
from modeling_bridge.data import load_bridge_shapes, parse_shapes_caption
from modeling_bridge.data.shapes import SHAPES_FAMILIES, _all_captions
from modeling_bridge.hub_utils import check_model_path, explain_load_error, run_command
from modeling_bridge.saving import write_json_atomically


SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[EOS]"]
LM_HEADS = 4  # attention heads of each caption LM: its width must be a multiple
LM_POSITIONS = 64  # the caption LMs' context: visual tokens, the prompt and the caption
MAX_NEW_TOKENS = 12  # of a generated caption


@dataclass
class LangBridgeArguments:
    model_name_or_path: str = field(
        metadata={"help": "A saved BRIDGE folder with its processor (outputs/demo/bridge)."}
    )
    output_dir: str = field(default="outputs/langbridge", metadata={"help": "Where results.json and figures go."})
    num_train: int = field(default=2000, metadata={"help": "bridge-shapes training scenes for the adapters."})
    lm_steps: int = field(default=1500, metadata={"help": "Training steps of each caption LM."})
    adapter_steps: int = field(default=1500, metadata={"help": "Training steps of each adapter."})
    batch_size: int = field(default=32, metadata={"help": "Batch size of LM and adapter training."})
    learning_rate: float = field(default=1e-3, metadata={"help": "AdamW learning rate (LMs and adapters)."})
    lm_layers: int = field(default=2, metadata={"help": "Transformer layers of each caption LM."})
    width_a: int = field(default=64, metadata={"help": "Hidden size of LM A (and C)."})
    width_b: int = field(default=96, metadata={"help": "Hidden size of LM B."})
    adapter_hidden_size: int = field(default=256, metadata={"help": "Width of the adapters' MLPs."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate the first N test images only."})
    seed: int = field(default=0, metadata={"help": "Seeds LM A, the adapters and the data; B and C use seed+1, +2."})


def word_tokenizer(words: list[str], seed: int | None) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over `words`; the ids are a permutation seeded by `seed` (None: the given order)."""
    order = np.arange(len(words)) if seed is None else np.random.default_rng(seed).permutation(len(words))
    backend = Tokenizer(models.WordLevel({w: int(i) for w, i in zip(words, order)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]")


def training_arguments(args, output_dir: str, steps: int, seed: int) -> TrainingArguments:
    return TrainingArguments(
        output_dir=output_dir,
        max_steps=steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        warmup_steps=0.05,
        lr_scheduler_type="cosine",
        logging_steps=max(1, steps // 5),
        save_strategy="no",
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        seed=seed,
        remove_unused_columns=False,
        disable_tqdm=True,
    )


def scene_words(caption: str, side: int, rng: np.random.Generator) -> list[str]:
    """The scene of `caption` as a `side` x `side` grid of words, row by row, as a LangBridge adapter can read an
    image's feature-map cells: the cells an object covers read as its colour and its shape, alternately (an object
    covers 2-4 cells, so both show), an empty cell as "a". Objects are placed as the caption says (the first-mentioned
    left of / above the other)."""
    parsed = parse_shapes_caption(caption)
    grid = ["a"] * (side * side)
    half = side // 2
    for index, (color, shape) in enumerate(parsed.objects):
        height, width = [(1, 2), (2, 1), (2, 2)][rng.integers(3)]
        rows, cols = (0, side - height), (0, side - width)
        if parsed.relation == "left of":
            cols = (0, half - width) if index == 0 else (half, side - width)
        elif parsed.relation == "above":
            rows = (0, half - height) if index == 0 else (half, side - height)
        top, left = rng.integers(rows[0], rows[1] + 1), rng.integers(cols[0], cols[1] + 1)
        first = int(rng.integers(2))  # which of the two words the object's first cell shows
        cells = [row * side + col for row in range(top, top + height) for col in range(left, left + width)]
        for k, cell in enumerate(cells):
            grid[cell] = (color, shape)[(k + first) % 2]
    return grid


def lm_corpus(tokenizer, captions: list[str], side: int, layouts: int, seed: int) -> dict[str, list[list[int]]]:
    """The LMs' text: each caption after its scene read as words (`scene_words`, `layouts` random layouts per
    caption) and the end-of-text token, one example per row, right-padded. The loss is on the caption and its
    end-of-text token only: the scene words are context, as an adapter's prefix is (trained on every position, the
    LMs spent themselves on the scene's noise and never learnt to read it; BENCHMARKS.md)."""
    eos, pad, rng = tokenizer.eos_token_id, tokenizer.pad_token_id, np.random.default_rng(seed)
    rows = []
    for index in rng.permutation(np.arange(len(captions)).repeat(layouts)):
        scene = tokenizer(" ".join(scene_words(captions[index], side, rng)))["input_ids"] + [eos]
        rows.append((scene, tokenizer(captions[index])["input_ids"] + [eos]))
    length = max(len(scene) + len(caption) for scene, caption in rows)
    columns = {"input_ids": [], "attention_mask": [], "labels": []}
    for scene, caption in rows:
        padding = length - len(scene) - len(caption)
        columns["input_ids"].append(scene + caption + [pad] * padding)
        columns["attention_mask"].append([1] * (len(scene) + len(caption)) + [0] * padding)
        columns["labels"].append([-100] * len(scene) + caption + [-100] * padding)
    return columns


def train_caption_lm(args, tokenizer, captions: list[str], side: int, width: int, seed: int) -> GPT2LMHeadModel:
    """A small GPT-2 trained on caption text only (`lm_corpus`)."""
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_embd=width, n_layer=args.lm_layers, n_head=LM_HEADS, n_positions=LM_POSITIONS,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    model = GPT2LMHeadModel(config)
    encoded = Dataset.from_dict(lm_corpus(tokenizer, captions, side, layouts=16, seed=seed))
    folder = os.path.join(args.output_dir, "runs", f"lm_{width}_{seed}")
    Trainer(
        model=model, args=training_arguments(args, folder, args.lm_steps, seed), train_dataset=encoded,
        data_collator=default_data_collator,
    ).train()  # fmt: skip
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


class CaptionCollator:
    """Images, the end-of-text token as the prompt (in the LMs' text a caption follows it), the captions as labels."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, rows):
        prompts = [self.processor.tokenizer.eos_token] * len(rows)
        return dict(
            self.processor(images=[r["image"] for r in rows], text=prompts, labels=[r["caption"] for r in rows])
        )


def train_adapter(args, rows, bridge, image_processor, lm, tokenizer, subset, adapter_type: str, seed: int):
    torch.manual_seed(seed)
    model = BridgeForConditionalGeneration.from_parts(
        bridge, lm, tokenizer, subset if adapter_type == "langbridge" else None,
        adapter_type=adapter_type, adapter_hidden_size=args.adapter_hidden_size,
    )  # fmt: skip
    model.bridge.requires_grad_(False)
    processor = BridgeGenerationProcessor(image_processor=image_processor, tokenizer=tokenizer)
    folder = os.path.join(args.output_dir, "runs", f"adapter_{adapter_type}_{lm.config.n_embd}_{seed}")
    Trainer(
        model=model, args=training_arguments(args, folder, args.adapter_steps, seed), train_dataset=rows,
        data_collator=CaptionCollator(processor),
    ).train()  # fmt: skip
    return model.eval(), processor


def attribute_accuracy(generated: str, caption: str) -> float:
    """The fraction of the caption's (colour, shape) objects that the generated caption names, each once."""
    truth = parse_shapes_caption(caption).objects
    try:
        named = set(parse_shapes_caption(generated).objects)
    except ValueError:
        named = set()
    return sum(obj in named for obj in truth) / len(truth)


@torch.no_grad()
def evaluate_captions(model, processor, rows, batch_size: int = 48) -> dict[str, float]:
    generated = []
    for start in range(0, len(rows), batch_size):
        batch = rows.select(range(start, min(start + batch_size, len(rows))))
        inputs = processor(images=list(batch["image"]), text=[processor.tokenizer.eos_token] * len(batch))
        tokens = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        generated += [text.strip() for text in processor.tokenizer.batch_decode(tokens, skip_special_tokens=True)]
    captions = rows["caption"]
    return {
        "exact_match": float(np.mean([g == c for g, c in zip(generated, captions)])),
        "attribute_accuracy": float(np.mean([attribute_accuracy(g, c) for g, c in zip(generated, captions)])),
        "examples": [{"caption": c, "generated": g} for g, c in list(zip(generated, captions))[:5]],
    }


@torch.no_grad()
def text_ceiling(lm, tokenizer, captions: list[str], side: int, seed: int) -> dict[str, float]:
    """What an LM makes of a perfect reading: each caption's scene as words (`scene_words`) then the end-of-text
    token, greedy continuation scored like the images' captions. An adapter cannot do better than its LM does here."""
    rng = np.random.default_rng(seed)
    generated = []
    for caption in captions:
        ids = tokenizer(" ".join(scene_words(caption, side, rng)))["input_ids"] + [tokenizer.eos_token_id]
        ids = torch.tensor([ids])
        tokens = lm.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_NEW_TOKENS, do_sample=False)[
            0, ids.shape[1] :
        ]
        generated.append(tokenizer.decode(tokens, skip_special_tokens=True).strip())
    return {
        "exact_match": float(np.mean([g == c for g, c in zip(generated, captions)])),
        "attribute_accuracy": float(np.mean([attribute_accuracy(g, c) for g, c in zip(generated, captions)])),
    }


def save_top_words_figure(model, processor, rows, path: str) -> None:
    """The word each feature-map cell of a few test images reads as (the A adapter's strongest word per token)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from modeling_bridge.saving import write_file_atomically

    images = list(rows.select(range(min(3, len(rows))))["image"])
    words = model.top_words(processor(images=images)["pixel_values"], k=1)
    side = int(round(len(words[0]) ** 0.5))
    figure, axes = plt.subplots(1, len(images), figsize=(3.2 * len(images), 3.4), squeeze=False)
    for axis, image, tokens, caption in zip(axes[0], images, words, rows["caption"]):
        axis.imshow(image, extent=(0, side, side, 0))
        for index, ((word, weight),) in enumerate(tokens[: side * side]):
            axis.text(index % side + 0.5, index // side + 0.5, f"{word}\n{weight:.2f}", ha="center", va="center",
                      fontsize=7, color="white")  # fmt: skip
        axis.set_title(caption, fontsize=8)
        axis.axis("off")
    figure.tight_layout()
    write_file_atomically(path, lambda tmp: figure.savefig(tmp, dpi=100))
    plt.close(figure)


def check_arguments(args: LangBridgeArguments) -> None:
    """Everything that can be wrong in the arguments, before any model is loaded or trained."""
    check_ints(args, "num_train", "lm_steps", "adapter_steps", "batch_size", "lm_layers", "adapter_hidden_size")
    check_ints(args, "max_eval_samples", optional=True)
    check_int(args.seed, "--seed", minimum=0)
    check_number(args.learning_rate, "--learning_rate", above=0)
    for flag in ("width_a", "width_b"):
        width = getattr(args, flag)
        check_int(width, f"--{flag}")
        if width % LM_HEADS:
            raise ValueError(
                f"--{flag} must be a multiple of {LM_HEADS} (the caption LMs' attention heads), got {width}."
            )
    check_model_path(args.model_name_or_path)
    check_results_folder(args.output_dir, inputs={args.model_name_or_path: "the model folder (--model_name_or_path)"})


def main(argv=None):
    (args,) = HfArgumentParser(LangBridgeArguments).parse_args_into_dataclasses(args=argv)
    check_arguments(args)
    try:
        bridge = AutoModel.from_pretrained(args.model_name_or_path).eval()
        image_processor = AutoProcessor.from_pretrained(args.model_name_or_path).image_processor
    except OSError as error:
        raise explain_load_error(args.model_name_or_path, "model", error) from None
    visual = bridge.config.num_vision_positions
    if visual + 1 + MAX_NEW_TOKENS > LM_POSITIONS:
        raise ValueError(
            f"{args.model_name_or_path} gives {visual} visual tokens per image; with the prompt and a caption of "
            f"up to {MAX_NEW_TOKENS} tokens they do not fit the caption LMs' context of {LM_POSITIONS} positions. "
            f"This experiment needs a small feature map (at most {LM_POSITIONS - 1 - MAX_NEW_TOKENS} visual tokens), "
            "such as make demo's model (16)."
        )
    os.makedirs(args.output_dir, exist_ok=True)
    data = load_bridge_shapes(num_train=args.num_train, seed=args.seed)
    rows = data["train"].select_columns(["image", "caption"])
    test = data["test"]
    if args.max_eval_samples is not None:
        test = test.select(range(min(args.max_eval_samples, len(test))))

    language = _all_captions(range(len(SHAPES_FAMILIES)), singles=True)  # the caption language, text only
    side = math.isqrt(bridge.config.num_vision_positions)  # the feature map's side: visual tokens per row
    words = SPECIAL_TOKENS + sorted({w for caption in language for w in caption.split()})
    tokenizers = {"A": word_tokenizer(words, None), "B": word_tokenizer(words, args.seed + 1),
                  "C": word_tokenizer(words, args.seed + 2)}  # fmt: skip
    widths = {"A": args.width_a, "B": args.width_b, "C": args.width_a}
    lms = {
        name: train_caption_lm(args, tokenizers[name], language, side, widths[name], args.seed + i)
        for i, name in enumerate("ABC")
    }
    ceilings = {name: text_ceiling(lms[name], tokenizers[name], test["caption"], side, args.seed) for name in lms}
    print("LMs given the test scenes as words:", {n: round(c["attribute_accuracy"], 3) for n, c in ceilings.items()})
    # every word of the caption language (the special tokens are no words): the subset the adapter weights
    subset = build_vocabulary_subset(tokenizers.values(), language, size=len(words) - len(SPECIAL_TOKENS))
    print(f"vocabulary subset: {len(subset)} words shared by the three tokenizers")

    parts = (args, rows, bridge, image_processor)
    lang_a, processor_a = train_adapter(*parts, lms["A"], tokenizers["A"], subset, "langbridge", args.seed)
    lang_b, processor_b = train_adapter(*parts, lms["B"], tokenizers["B"], subset, "langbridge", args.seed)
    mlp_a, _ = train_adapter(*parts, lms["A"], tokenizers["A"], None, "mlp", args.seed)
    processor_c = BridgeGenerationProcessor(image_processor=image_processor, tokenizer=tokenizers["C"])

    moved_b, moved_c = copy.deepcopy(lang_a), copy.deepcopy(lang_a)
    dropped = moved_b.transfer_to(lms["B"], tokenizers["B"]) + moved_c.transfer_to(lms["C"], tokenizers["C"])
    mlp_c = copy.deepcopy(mlp_a)
    mlp_c.language_model = lms["C"]  # what a LLaVA-style adapter allows: plug it into an LM of the same width

    conditions = {
        "A + LangBridge trained on A": (lang_a, processor_a),
        "B + LangBridge from A, transferred": (moved_b, processor_b),
        "B + LangBridge trained on B": (lang_b, processor_b),
        "C + LangBridge from A, transferred": (moved_c, processor_c),
        "A + MLP trained on A": (mlp_a, processor_a),
        "C + MLP from A, plugged in": (mlp_c, processor_c),
    }
    results = {name: evaluate_captions(model, processor, test) for name, (model, processor) in conditions.items()}
    transferred, trained = (results[k]["attribute_accuracy"] for k in list(conditions)[1:3])
    summary = {
        "arguments": asdict(args),
        "vocabulary_subset": subset,
        "subset_words_dropped_by_transfer": dropped,
        "transferred_over_trained_on_b": transferred / trained if trained else None,
        "lm_text_ceiling": ceilings,
        "results": results,
    }
    print(f"\nheld-out bindings of bridge-shapes ({len(test)} images), greedy captions")
    print(f"{'condition':<38}{'exact':>8}{'attributes':>12}")
    for name, row in results.items():
        print(f"{name:<38}{row['exact_match']:>8.3f}{row['attribute_accuracy']:>12.3f}")
    if summary["transferred_over_trained_on_b"] is not None:
        print(f"transferred / trained on B (attributes): {summary['transferred_over_trained_on_b']:.2f}")
    try:
        save_top_words_figure(lang_a, processor_a, test, os.path.join(args.output_dir, "top_words.png"))
    except ImportError:
        print("top_words.png skipped: matplotlib is not installed")
    path = os.path.join(args.output_dir, "results.json")
    write_json_atomically(path, summary)
    print(f"wrote {path}")
    return summary


if __name__ == "__main__":
    sys.exit(run_command(main))
