"""LoRA finetuning of a pretrained BRIDGE with PEFT: adapters on the interaction layers' q/k/v/o projections and on
the towers' attention q/k/v (found per tower type), plus the learned scalars (logit scale, ITC mix, gates,
temperatures) trained in full. Everything else stays frozen.

The adapter and the processor are written atomically (temporary folder, then rename) to `--adapter_dir` (default
`<output_dir>/adapter`, so Trainer checkpoints in `output_dir` are never touched). The run ends by checking the saved
adapter: base + adapter reloaded with `load_lora_adapter` (`PeftModel.from_pretrained`, checked), and that reload
merged with `merge_and_unload()`, must give the scores the trained model gave before saving (unimodal and fused); the
maximum differences are printed and the run fails if they exceed `--verify_tolerance`. `--activation_checkpointing`
works with the frozen towers (transformers v5 checkpoints non-reentrantly by default).

An existing `--adapter_dir` / `--merged_dir` is replaced only if it is a previous save (adapter, model, processor and
Hub code files only) or with `--overwrite`, and never if it is, or holds, an input of the run, `output_dir` or the
other output folder; this is checked before training. Wrong input ends the run with one `error: ...` line on stderr
and exit code 1.

    python examples/run_lora_finetuning.py --model_name_or_path outputs/demo/bridge \\
        --dataset bridge-shapes --output_dir outputs/lora --max_steps 200 --per_device_train_batch_size 32

Reload the result:

    base = BridgeForPreTraining.from_pretrained("outputs/demo/bridge")
    # (Hub code: AutoModelForPreTraining.from_pretrained(repo, trust_remote_code=True); AutoPeftModel refuses it)
    model = load_lora_adapter(base, "outputs/lora/adapter")  # from modeling_bridge.training.lora
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForPreTraining, AutoProcessor, HfArgumentParser, TrainingArguments, set_seed


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

import modeling_bridge  # noqa: E402,F401  (registers BRIDGE with the Auto classes)
from modeling_bridge import BridgeForPreTraining, BridgeProcessor  # noqa: E402
from modeling_bridge.command_line import (  # noqa: E402
    check_int,
    check_ints,
    check_number,
    check_results_folder,
    check_training_arguments,
)
from modeling_bridge.data import BridgeDataCollator, load_bridge_shapes, load_image_text_dataset  # noqa: E402
from modeling_bridge.hub_utils import check_model_path, explain_load_error, progress_bars, run_command  # noqa: E402
from modeling_bridge.saving import check_output_dir  # noqa: E402
from modeling_bridge.training import (  # noqa: E402
    BridgeTrainer,
    find_bridge_model,
    make_lora_model,
    save_pretrained_atomically,
)
from modeling_bridge.training.lora import DEFAULT_MODULES_TO_SAVE, load_lora_adapter  # noqa: E402


logger = logging.getLogger("run_lora_finetuning")


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        metadata={"help": "A saved BRIDGE folder (model + processor), or a Hub repo with --trust_remote_code."}
    )
    processor_name_or_path: str | None = field(
        default=None, metadata={"help": "Where the processor is, if not next to the model."}
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Load model and processor through the Auto classes as Hub code."}
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha (scaling = alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA branch."})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "Module names (suffixes) to adapt. Default: the interaction q/k/v/o projections and the "
            "towers' attention q/k/v, found by inspecting the towers."
        },
    )
    lora_modules_to_save: list[str] = field(
        default_factory=lambda: list(DEFAULT_MODULES_TO_SAVE),
        metadata={"help": "Modules trained in full and saved with the adapter (give 'none' for none)."},
    )
    adapter_dir: str | None = field(
        default=None, metadata={"help": "Where the final adapter + processor go. Default: <output_dir>/adapter."}
    )
    merged_dir: str | None = field(
        default=None,
        metadata={
            "help": "Also save the merged model (adapter folded into the weights) + processor here: a plain "
            "BRIDGE folder that AutoModel and the zero-shot pipeline load without PEFT."
        },
    )
    verify_tolerance: float = field(
        default=1e-4, metadata={"help": "Largest score difference accepted by the reload / merge check."}
    )
    overwrite: bool = field(
        default=False,
        metadata={
            "help": "Replace an existing adapter_dir / merged_dir even if it is not a previous save (never "
            "an input folder, output_dir, or the other output folder)."
        },
    )


@dataclass
class DataArguments:
    dataset: str = field(
        default="bridge-shapes",
        metadata={
            "help": "'bridge-shapes' (built in, offline), a saved `datasets` folder, a folder "
            "`datasets.load_dataset` reads, or a COCO/Flickr Karpathy JSON (with --image_root)."
        },
    )
    image_root: str | None = field(default=None, metadata={"help": "Image folder of a Karpathy JSON."})
    image_column: str = field(default="image", metadata={"help": "Image column (or JSON key) of the source."})
    text_column: str = field(default="caption", metadata={"help": "Caption column (or JSON key) of the source."})
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: str | None = field(default=None, metadata={"help": "Split to evaluate on with --do_eval."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep the first N training rows."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep the first N evaluation rows."})
    skip_invalid: bool = field(default=False, metadata={"help": "Drop (and count) rows with bad images/captions."})
    shapes_num_train: int = field(default=4000, metadata={"help": "bridge-shapes: rows in the train split."})
    shapes_image_size: int = field(default=64, metadata={"help": "bridge-shapes: image side in pixels."})
    mlm_probability: float = field(
        default=0.15, metadata={"help": "Token masking rate, used only if the model's mlm_loss_weight > 0."}
    )
    mim_probability: float = field(
        default=0.4, metadata={"help": "Patch masking rate, used only if the model's mim_loss_weight > 0."}
    )


def load_base_model(model_args: ModelArguments):
    """The frozen base. Local package: `BridgeForPreTraining.from_pretrained`; Hub code: the Auto class (PEFT's
    `AutoPeftModel` refuses remote-code bases, so the base is always loaded first and the adapter put on it)."""
    path = model_args.model_name_or_path
    check_model_path(path, "model folder")
    try:
        if model_args.trust_remote_code:
            return AutoModelForPreTraining.from_pretrained(path, trust_remote_code=True)
        return BridgeForPreTraining.from_pretrained(path)
    except OSError as error:
        raise explain_load_error(path, "model", error) from None


def load_processor(model_args: ModelArguments):
    path = model_args.processor_name_or_path or model_args.model_name_or_path
    check_model_path(path, "processor folder")
    try:
        if model_args.trust_remote_code:
            return AutoProcessor.from_pretrained(path, trust_remote_code=True)
        return BridgeProcessor.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"Could not load a BRIDGE processor from {path!r} ({error}). Save the processor next to the "
            "model, or pass --processor_name_or_path."
        ) from error


def load_splits(data_args: DataArguments, seed: int, show_progress: bool = True):
    """(train, eval or None) in the schema `image` / `caption` / `image_id`."""
    if data_args.dataset == "bridge-shapes":
        data = load_bridge_shapes(
            num_train=data_args.shapes_num_train, image_size=data_args.shapes_image_size, seed=seed
        )
    else:
        data = load_image_text_dataset(
            data_args.dataset,
            image_column=data_args.image_column,
            text_column=data_args.text_column,
            image_root=data_args.image_root,
            skip_invalid=data_args.skip_invalid,
            show_progress=show_progress,
        )
    if not hasattr(data, "keys"):  # a single Dataset (e.g. one Karpathy JSON): it is the training split
        if data_args.eval_split:
            raise ValueError(f"--eval_split {data_args.eval_split!r} given, but {data_args.dataset} has no splits.")
        data = {data_args.train_split: data}
    splits = list(data.keys())
    for flag, name in (("--train_split", data_args.train_split), ("--eval_split", data_args.eval_split)):
        if name is not None and name not in data:
            raise ValueError(f"no split {name!r} ({flag}) in {data_args.dataset}; it has {splits}.")
    train = data[data_args.train_split]
    evaluation = data[data_args.eval_split] if data_args.eval_split else None
    if data_args.max_train_samples is not None:
        train = train.select(range(min(data_args.max_train_samples, len(train))))
    if evaluation is not None and data_args.max_eval_samples is not None:
        evaluation = evaluation.select(range(min(data_args.max_eval_samples, len(evaluation))))
    if len(train) < 2:
        raise ValueError(f"the training split has {len(train)} row(s); contrastive training needs at least 2.")
    return train, evaluation


@contextlib.contextmanager
def peft_without_deprecation_noise():
    """PeftModel reads transformers' deprecated `is_gradient_checkpointing`; the FutureWarning is not the user's to
    act on, so it is hidden here (and only here)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


@torch.no_grad()
def bridge_scores(model, batch: dict) -> dict[str, torch.Tensor]:
    """Unimodal and fused image-text score matrices of `batch`, computed by the inner BridgeModel in eval mode."""
    bridge = find_bridge_model(model)
    was_training = model.training
    model.eval()
    inputs = {k: batch[k] for k in ("pixel_values", "input_ids", "attention_mask", "token_type_ids") if k in batch}
    device = next(bridge.parameters()).device
    inputs = {k: v.to(device) for k, v in inputs.items()}
    scores = {mode: bridge(**inputs, score=mode).logits_per_image.float().cpu() for mode in ("unimodal", "fused")}
    model.train(was_training)
    return scores


def verify_saved_adapter(model_args: ModelArguments, adapter_dir: str, reference: dict, batch: dict, device):
    """Reload base + adapter from disk, then merge it, and compare their scores with `reference` (the trained model's
    scores before saving). Returns the maximum absolute differences and the merged model; raises if a difference
    exceeds the tolerance.

    Not bit-exact in general: CPU matmul kernels may sum in an order that depends on the memory alignment of the
    weights, and safetensors maps them at arbitrary offsets, so expect differences around 1e-6."""
    with peft_without_deprecation_noise():
        reloaded = load_lora_adapter(load_base_model(model_args), adapter_dir).to(device).eval()
    differences = {}
    for mode, score in bridge_scores(reloaded, batch).items():
        differences[f"reload_{mode}"] = float((score - reference[mode]).abs().max())
    merged = reloaded.merge_and_unload().eval()
    for mode, score in bridge_scores(merged, batch).items():
        differences[f"merged_{mode}"] = float((score - reference[mode]).abs().max())
    for name, value in differences.items():
        print(f"max |score difference| {name:>17}: {value:.3e}")
    worst = max(differences, key=differences.get)
    if not differences[worst] <= model_args.verify_tolerance:
        raise RuntimeError(
            f"The saved adapter does not reproduce the trained model: {worst} differs by "
            f"{differences[worst]:.3e} > --verify_tolerance {model_args.verify_tolerance}."
        )
    return differences, merged


def output_folders(model_args: ModelArguments, data_args: DataArguments, training_args):
    """(adapter_dir, what it must not replace), (merged_dir or None, what it must not replace): existing inputs of
    the run, output_dir (checkpoints, lora_results.json) and the other output folder, each with how to name it."""
    inputs = {
        model_args.model_name_or_path: "the model folder",
        model_args.processor_name_or_path: "the processor folder",
        data_args.dataset: "the dataset",
        data_args.image_root: "the image folder",
        training_args.resume_from_checkpoint: "the checkpoint",
    }
    inputs = {p: label for p, label in inputs.items() if isinstance(p, str) and p and os.path.exists(p)}
    inputs[training_args.output_dir] = "the output_dir"
    adapter_dir = model_args.adapter_dir or os.path.join(training_args.output_dir, "adapter")
    merged_dir = model_args.merged_dir
    return (
        (adapter_dir, {**inputs, merged_dir: "the merged model folder"}),
        (merged_dir, {**inputs, adapter_dir: "the adapter folder"}),
    )


def main(argv: list[str] | None = None) -> dict:
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO, stream=sys.stdout
    )  # stderr is for warnings and the `error:` line
    # The rows hold raw images and captions that only the collator turns into tensors.
    training_args.remove_unused_columns = False
    if training_args.label_names is None:
        # Trainer would take forward's `mlm_labels` for the label column and, when MLM is off, skip eval_loss;
        # BRIDGE computes its loss itself (return_loss defaults to True).
        training_args.label_names = []
    set_seed(training_args.seed)

    with progress_bars(enabled=not training_args.disable_tqdm):  # --disable_tqdm: every bar, not only Trainer's
        return finetune(model_args, data_args, training_args)


def check_ranges(model_args: ModelArguments, data_args: DataArguments, training_args) -> None:
    """The numeric arguments' ranges, and that output_dir (checkpoints, lora_results.json) is no file nor inside the
    model folder."""
    check_ints(model_args, "lora_r", "lora_alpha")
    check_number(model_args.lora_dropout, "--lora_dropout", minimum=0, below=1)
    check_number(model_args.verify_tolerance, "--verify_tolerance", minimum=0)
    check_ints(data_args, "max_train_samples", "max_eval_samples", optional=True)
    check_ints(data_args, "shapes_num_train")
    check_int(data_args.shapes_image_size, "--shapes_image_size", minimum=32)
    for flag in ("mlm_probability", "mim_probability"):
        check_number(getattr(data_args, flag), f"--{flag}", minimum=0, maximum=1)
    check_training_arguments(training_args)
    check_results_folder(
        training_args.output_dir,
        inputs={model_args.model_name_or_path: "the model folder (--model_name_or_path)"},
    )


def finetune(model_args: ModelArguments, data_args: DataArguments, training_args) -> dict:
    """The run itself: checks, model, LoRA, data, Trainer, saves and their verification; returns the results."""
    check_ranges(model_args, data_args, training_args)
    # Checked before anything is loaded or trained: where the results go, and the batch size.
    (adapter_dir, adapter_protect), (merged_dir, merged_protect) = output_folders(model_args, data_args, training_args)
    if training_args.should_save:
        check_output_dir(adapter_dir, overwrite=model_args.overwrite, protect=adapter_protect)
        if merged_dir:
            check_output_dir(merged_dir, overwrite=model_args.overwrite, protect=merged_protect)
    if training_args.per_device_train_batch_size * training_args.world_size < 2:
        raise ValueError(
            f"--per_device_train_batch_size {training_args.per_device_train_batch_size} on "
            f"{training_args.world_size} process(es) gives batches of 1 pair, whose contrastive loss is "
            "0; use at least 2 pairs per step."
        )

    base = load_base_model(model_args)
    processor = load_processor(model_args)
    config = base.config
    modules_to_save = [m for m in model_args.lora_modules_to_save if m.lower() != "none"]
    with peft_without_deprecation_noise():
        model = make_lora_model(
            base,
            r=model_args.lora_r,
            alpha=model_args.lora_alpha,
            dropout=model_args.lora_dropout,
            target_modules=model_args.lora_target_modules,
            modules_to_save=modules_to_save or None,
        )
    model.print_trainable_parameters()

    train_dataset, eval_dataset = load_splits(
        data_args, training_args.seed, show_progress=not training_args.disable_tqdm
    )
    collator = BridgeDataCollator.for_model(
        processor, config, mlm_probability=data_args.mlm_probability, mim_probability=data_args.mim_probability
    )
    trainer = BridgeTrainer(
        model=model, args=training_args, train_dataset=train_dataset, eval_dataset=eval_dataset, data_collator=collator
    )
    results = {}
    if training_args.do_train or not training_args.do_eval:
        train_output = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        results["train"] = train_output.metrics
    if training_args.do_eval and eval_dataset is not None:
        results["eval"] = trainer.evaluate()

    # Scores of the trained model on a fixed batch (no masking), kept to check the saved adapter against.
    verify_rows = [train_dataset[i] for i in range(min(4, len(train_dataset)))]
    verify_batch = BridgeDataCollator(processor, max_length=config.max_text_positions)(verify_rows)
    reference = bridge_scores(model, verify_batch)

    if training_args.should_save:
        save_pretrained_atomically(
            adapter_dir, model, processor, overwrite=model_args.overwrite, protect=adapter_protect
        )
        print(f"Saved the LoRA adapter and the processor to {adapter_dir}")
        results["verification"], merged = verify_saved_adapter(
            model_args, adapter_dir, reference, verify_batch, next(model.parameters()).device
        )
        results["adapter_dir"] = adapter_dir
        if merged_dir:
            save_pretrained_atomically(
                merged_dir, merged, processor, overwrite=model_args.overwrite, protect=merged_protect
            )
            print(f"Saved the merged model and the processor to {merged_dir}")
            results["merged_dir"] = merged_dir
        with open(os.path.join(training_args.output_dir, "lora_results.json"), "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2, default=str)
    return results


if __name__ == "__main__":
    sys.exit(run_command(main))
