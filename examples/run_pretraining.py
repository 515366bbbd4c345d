"""Pre-train BRIDGE with one stage of the curriculum (the presets a, b, c of `modeling_bridge.training`, read by
`load_training_stage`, or a stage JSON file of your own) and the Trainer.

The model comes from a saved BRIDGE folder (`--model_name_or_path`, e.g. the previous stage's output), from two
pretrained towers (`--vision_model` + `--text_model`), or from a BridgeConfig JSON with random towers
(`--config_name configuration/bridge-tiny.json`, with `--processor_name_or_path` for the processor).
`--config_overrides '{"num_interaction_layers": 4, "shared_dim": 512}'` sets BridgeConfig fields of any source (a
saved model accepts only the fields that keep its weights' shapes, e.g. loss weights or `num_hard_negatives`).
The data is bridge-shapes (`--dataset bridge-shapes`), a `datasets` folder with image and text columns, or
a COCO/Flickr Karpathy JSON (`--dataset annotations.json --image_root images/`).

    python examples/run_pretraining.py --stage a --vision_model google/vit-base-patch16-224 \
        --text_model bert-base-uncased --dataset coco_karpathy_train.json --image_root coco/ \
        --output_dir outputs/stage_a --per_device_train_batch_size 64 --num_train_epochs 5

`--tower_state_cache DIR` (stage A: both towers frozen) embeds the data once into DIR, a `datasets` folder, and
trains the interaction layers on the cached states: the towers never run again, in this run or the next one with
the same towers and data.
`--resume_from_checkpoint` (a checkpoint folder, or `True` for the latest in `--output_dir`) continues a killed run.
The stage's learning rate, weight decay, warmup (as `warmup_steps`, a fraction below 1) and gradient clipping apply
unless given on the command line.
The final model and processor are written atomically to `--output_dir/model`. An existing `--output_dir/model` is
replaced only if it is a previous save (model, processor and Hub code files only) or with `--overwrite`, and never
if it is, or holds, an input of the run. Wrong input ends the run with one `error: ...` line and exit code 1.
"""

import inspect
import json
import logging
import os
import sys
from dataclasses import dataclass, field

import torch
from transformers import AutoConfig, AutoModelForPreTraining, HfArgumentParser, TrainingArguments

import modeling_bridge  # noqa: F401  (registers BRIDGE with the Auto classes)
from modeling_bridge import BridgeConfig, BridgeForPreTraining, BridgeProcessor
from modeling_bridge.command_line import (
    check_int,
    check_ints,
    check_number,
    check_results_folder,
    check_training_arguments,
)
from modeling_bridge.data import BridgeDataCollator, load_bridge_shapes, load_image_text_dataset
from modeling_bridge.hub_utils import check_model_path, explain_load_error, progress_bars, run_command
from modeling_bridge.saving import check_output_dir
from modeling_bridge.training import (
    BridgeTrainer,
    TowerStateCollator,
    apply_training_stage,
    cache_tower_states,
    load_training_stage,
    save_pretrained_atomically,
)


logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(default=None, metadata={"help": "A saved BRIDGE model folder."})
    vision_model: str | None = field(default=None, metadata={"help": "Pretrained vision tower (with --text_model)."})
    text_model: str | None = field(default=None, metadata={"help": "Pretrained text tower (with --vision_model)."})
    config_name: str | None = field(default=None, metadata={"help": "BridgeConfig JSON: random towers."})
    processor_name_or_path: str | None = field(
        default=None, metadata={"help": "Processor folder; defaults to the model folder or the two towers."}
    )
    stage: str = field(default="a", metadata={"help": "a, b, c, or a stage JSON file."})
    fused_objective: str | None = field(
        default=None, metadata={"help": "pairwise (default) or aligned.", "choices": ["pairwise", "aligned"]}
    )
    num_hard_negatives: int | None = field(default=None, metadata={"help": "Mined negatives per anchor."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Load Hub code for the model folder."})
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": 'BridgeConfig fields as a JSON object, e.g. \'{"num_interaction_layers": 4, "shared_dim": 512}\'; '
            "applied to every model source (a saved model: only fields that keep its weights' shapes)."
        },
    )
    overwrite: bool = field(
        default=False,
        metadata={
            "help": "Replace an existing output_dir/model even if it is not a previous save (never an input folder)."
        },
    )


@dataclass
class DataArguments:
    dataset: str = field(
        default="bridge-shapes",
        metadata={
            "help": "bridge-shapes, a saved datasets folder, a folder datasets.load_dataset reads, or a "
            "Karpathy-style JSON (with --image_root)."
        },
    )
    image_root: str | None = field(default=None, metadata={"help": "Image folder of a Karpathy JSON."})
    image_column: str = field(default="image", metadata={"help": "Image column of a datasets dataset."})
    text_column: str = field(default="caption", metadata={"help": "Text column of a datasets dataset."})
    train_split: str = field(default="train", metadata={"help": "Split used for training."})
    eval_split: str | None = field(default=None, metadata={"help": "Split used for evaluation, if any."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training set."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate the evaluation set."})
    shapes_num_train: int = field(default=4000, metadata={"help": "bridge-shapes: rows in the train split."})
    shapes_image_size: int = field(default=64, metadata={"help": "bridge-shapes: image side in pixels."})
    skip_invalid: bool = field(default=False, metadata={"help": "Skip unreadable images / empty captions."})
    mlm_probability: float = field(default=0.15, metadata={"help": "Token masking rate when MLM is on."})
    mim_probability: float = field(default=0.4, metadata={"help": "Patch masking rate when MIM is on."})
    tower_state_cache: str | None = field(
        default=None,
        metadata={
            "help": "With both towers frozen (stage A): embed every row once into this folder and train on the "
            "cached tower states (reused while the towers, rows and processor stay the same)."
        },
    )


# BridgeConfig's own fields; the tower configs come from the towers and are not overridden here.
CONFIG_FIELDS = sorted(set(inspect.get_annotations(BridgeConfig)) - {"vision_config", "text_config"})


def parse_config_overrides(args: ModelArguments) -> dict:
    """`--config_overrides` (a JSON object of BridgeConfig fields) plus `--fused_objective` /
    `--num_hard_negatives`, which win over the same keys in the JSON."""
    overrides = {}
    if args.config_overrides:
        try:
            overrides = json.loads(args.config_overrides)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"--config_overrides is not valid JSON ({error}); give an object such as '{{\"shared_dim\": 512}}'."
            ) from None
        if not isinstance(overrides, dict):
            raise ValueError(
                f"--config_overrides must be a JSON object of BridgeConfig fields, got "
                f"{type(overrides).__name__} {args.config_overrides}."
            )
        unknown = sorted(set(overrides) - set(CONFIG_FIELDS))
        if unknown:
            raise ValueError(
                f"--config_overrides: unknown BridgeConfig field(s) {unknown}; the fields are {CONFIG_FIELDS}."
            )
    if args.num_hard_negatives is not None and args.num_hard_negatives < 1:
        raise ValueError(f"--num_hard_negatives must be >= 1, got {args.num_hard_negatives}.")
    overrides.update(
        {
            k: v
            for k, v in (("fused_objective", args.fused_objective), ("num_hard_negatives", args.num_hard_negatives))
            if v is not None
        }
    )
    return overrides


def override_config(config, overrides: dict):
    """A copy of `config` with `overrides`, validated by the config class itself."""
    if not overrides:
        return config
    try:
        return type(config)(**{**config.to_dict(), **overrides})
    except (TypeError, ValueError) as error:
        raise ValueError(f"--config_overrides: {error}") from None


def check_same_weight_shapes(path: str, saved_config, config, trust_remote_code: bool) -> None:
    """The model with the overridden `config` must have the saved model's weights, shape for shape (compared on the
    meta device, so nothing is allocated); otherwise from_pretrained would fail with a table of mismatches."""
    with torch.device("meta"):
        saved, wanted = (
            AutoModelForPreTraining.from_config(c, trust_remote_code=trust_remote_code) for c in (saved_config, config)
        )
    saved = {k: tuple(v.shape) for k, v in saved.state_dict().items()}
    wanted = {k: tuple(v.shape) for k, v in wanted.state_dict().items()}
    if saved == wanted:
        return
    differences = [
        f"{k} would be {wanted[k]} instead of {saved[k]}"
        for k in sorted(saved.keys() & wanted.keys())
        if saved[k] != wanted[k]
    ]
    differences += [f"{k} would be new" for k in sorted(wanted.keys() - saved.keys())]
    differences += [f"{k} would be dropped" for k in sorted(saved.keys() - wanted.keys())]
    raise ValueError(
        f"--config_overrides changes the shapes of the weights saved in {path} ({differences[0]}, and "
        f"{len(differences) - 1} more): a trained model keeps its size. Build a new model of that size "
        "from the towers (--vision_model with --text_model) or from --config_name."
    )


def check_one_model_source(args: ModelArguments) -> None:
    sources = [bool(args.model_name_or_path), bool(args.vision_model or args.text_model), bool(args.config_name)]
    if sum(sources) != 1:
        raise ValueError(
            "give exactly one of --model_name_or_path, --vision_model with --text_model, or --config_name."
        )


def load_model_and_processor(args: ModelArguments, overrides: dict):
    check_one_model_source(args)
    if args.processor_name_or_path:
        check_model_path(args.processor_name_or_path, "processor folder")
    if args.model_name_or_path:
        path, trust = args.model_name_or_path, args.trust_remote_code
        check_model_path(path, "model folder")
        try:
            saved_config = (
                AutoConfig.from_pretrained(path, trust_remote_code=True)
                if trust
                else BridgeConfig.from_pretrained(path)
            )
        except OSError as error:
            raise explain_load_error(path, "model", error) from None
        config = override_config(saved_config, overrides)
        if overrides:
            check_same_weight_shapes(path, saved_config, config, trust)
        model_class = AutoModelForPreTraining if trust else BridgeForPreTraining
        try:
            model = model_class.from_pretrained(path, config=config, **({"trust_remote_code": True} if trust else {}))
        except OSError as error:
            raise explain_load_error(path, "model", error) from None
        return model, load_processor(args.processor_name_or_path or path, trust)
    if args.vision_model or args.text_model:
        if not (args.vision_model and args.text_model):
            raise ValueError("--vision_model and --text_model go together.")
        check_model_path(args.vision_model, "vision tower")
        check_model_path(args.text_model, "text tower")
        try:
            bridge = modeling_bridge.BridgeModel.from_vision_text_pretrained(
                args.vision_model, args.text_model, **overrides
            )
        except TypeError as error:  # a value of the wrong type in --config_overrides
            raise ValueError(f"--config_overrides: {error}") from None
        except OSError as error:
            raise OSError(
                f"cannot load the towers {args.vision_model} and {args.text_model}: {' '.join(str(error).split())}"
            ) from None
        model = BridgeForPreTraining(bridge.config, vision_model=bridge.vision_model, text_model=bridge.text_model)
        model.bridge.load_state_dict(bridge.state_dict())  # the new layers keep the initialisation just made
        if args.processor_name_or_path:
            return model, load_processor(args.processor_name_or_path, False)
        try:
            return model, BridgeProcessor.from_vision_text_pretrained(args.vision_model, args.text_model)
        except OSError as error:
            raise OSError(
                f"cannot load a processor from the towers ({' '.join(str(error).split())}); pass "
                "--processor_name_or_path."
            ) from None
    if not args.processor_name_or_path:
        raise ValueError(
            "--config_name builds random towers and needs --processor_name_or_path (a folder with the "
            "image processor and tokenizer)."
        )
    if not os.path.isfile(args.config_name):
        raise FileNotFoundError(
            f"--config_name {args.config_name} does not exist or is not a file (give a "
            "BridgeConfig JSON, e.g. configuration/bridge-tiny.json)."
        )
    try:
        config = BridgeConfig.from_json_file(args.config_name)
    except (TypeError, ValueError) as error:
        raise ValueError(f"--config_name {args.config_name}: {' '.join(str(error).split())}") from None
    config = override_config(config, overrides)
    return BridgeForPreTraining(config), load_processor(args.processor_name_or_path, False)


def load_processor(path: str, trust_remote_code: bool):
    try:
        return BridgeProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise OSError(
            f"cannot load a BRIDGE processor from {path} ({' '.join(str(error).split())}); save the "
            "processor next to the model, or pass --processor_name_or_path."
        ) from None


def load_splits(args: DataArguments, seed: int, show_progress: bool = True):
    if args.dataset == "bridge-shapes":
        if args.eval_split not in (None, "test"):
            raise ValueError(f"bridge-shapes has the splits ['train', 'test']; got --eval_split {args.eval_split}.")
        if args.train_split != "train":
            raise ValueError(f"bridge-shapes has the splits ['train', 'test']; got --train_split {args.train_split}.")
        data = load_bridge_shapes(num_train=args.shapes_num_train, image_size=args.shapes_image_size, seed=seed)
        train, evaluation = data["train"], data["test"] if args.eval_split else None
    else:
        data = load_image_text_dataset(
            args.dataset,
            image_column=args.image_column,
            text_column=args.text_column,
            image_root=args.image_root,
            skip_invalid=args.skip_invalid,
            show_progress=show_progress,
        )
        if hasattr(data, "keys"):  # a DatasetDict
            for flag, name in (("--train_split", args.train_split), ("--eval_split", args.eval_split)):
                if name is not None and name not in data:
                    raise ValueError(f"no split {name!r} ({flag}) in {args.dataset}; it has {list(data)}.")
            train = data[args.train_split]
            evaluation = data[args.eval_split] if args.eval_split else None
        elif args.eval_split:
            raise ValueError(f"--eval_split {args.eval_split!r} given, but {args.dataset} has no splits.")
        else:
            train, evaluation = data, None
    if args.max_train_samples is not None:
        train = train.select(range(min(args.max_train_samples, len(train))))
    if evaluation is not None and args.max_eval_samples is not None:
        evaluation = evaluation.select(range(min(args.max_eval_samples, len(evaluation))))
    if len(train) < 2:  # one pair has no negative: its contrastive loss would be 0, silently
        raise ValueError(f"the training split has {len(train)} row(s); contrastive pre-training needs at least 2.")
    return train, evaluation


def input_paths(model_args: ModelArguments, data_args: DataArguments, training_args) -> dict[str, str]:
    """Existing paths this run reads, with how to name them: an output folder must not be, or contain, one."""
    candidates = {
        model_args.model_name_or_path: "the model folder",
        model_args.processor_name_or_path: "the processor folder",
        model_args.vision_model: "the vision tower",
        model_args.text_model: "the text tower",
        model_args.config_name: "the config file",
        model_args.stage: "the stage file",
        data_args.dataset: "the dataset",
        data_args.image_root: "the image folder",
        training_args.resume_from_checkpoint: "the checkpoint",
    }
    return {p: label for p, label in candidates.items() if isinstance(p, str) and p and os.path.exists(p)}


def cache_splits(model, processor, train, evaluation, data_args: DataArguments, training_args):
    """Both splits (columns `image` and `caption`, as `load_splits` gives them) as cached tower states
    (`cache_tower_states`), in `<tower_state_cache>/{train,eval}`. Only for
    frozen towers and objectives that read the towers' final states (ITC, ITM, cycle), as in stage A."""
    bridge = model.bridge
    trainable = [
        n for n in ("vision", "text") if any(p.requires_grad for p in getattr(bridge, f"{n}_model").parameters())
    ]
    if trainable:
        raise ValueError(
            f"--tower_state_cache needs frozen towers, but this stage trains the {' and '.join(trainable)} tower; "
            "use it with stage a (or a stage whose *_trainable_blocks are 0)."
        )
    if model.config.mlm_loss_weight > 0 or model.config.mim_loss_weight > 0:
        raise ValueError(
            "--tower_state_cache cannot serve MLM / MIM (they run the towers on masked inputs); set their loss "
            "weights to 0 or drop --tower_state_cache."
        )
    splits = []
    for name, split in (("train", train), ("eval", evaluation)):
        if split is None:
            splits.append(None)
            continue
        with training_args.main_process_first(desc=f"caching the {name} tower states"):
            splits.append(
                cache_tower_states(
                    model,
                    split,
                    processor,
                    os.path.join(data_args.tower_state_cache, name),
                    batch_size=training_args.per_device_eval_batch_size,
                    progress=not training_args.disable_tqdm,
                )
            )
    return tuple(splits)


def check_ranges(model_args: ModelArguments, data_args: DataArguments, training_args) -> None:
    """The numeric arguments' ranges, and that the results folder is no file nor inside an input folder."""
    check_ints(data_args, "max_train_samples", "max_eval_samples", optional=True)
    check_ints(data_args, "shapes_num_train")
    check_int(data_args.shapes_image_size, "--shapes_image_size", minimum=32)
    for flag in ("mlm_probability", "mim_probability"):
        check_number(getattr(data_args, flag), f"--{flag}", minimum=0, maximum=1)
    check_training_arguments(training_args)
    inputs = {
        model_args.model_name_or_path: "the model folder (--model_name_or_path)",
        model_args.vision_model: "the vision tower folder (--vision_model)",
        model_args.text_model: "the text tower folder (--text_model)",
    }
    check_results_folder(training_args.output_dir, inputs=inputs)
    if data_args.tower_state_cache:  # a cache written inside an input folder would make that folder not ours
        check_results_folder(data_args.tower_state_cache, "--tower_state_cache", inputs=inputs)


def check_batch_size(training_args) -> None:
    """In-batch contrastive losses need 2 pairs per step (all ranks together: they are gathered)."""
    if training_args.per_device_train_batch_size * training_args.world_size < 2:
        raise ValueError(
            f"--per_device_train_batch_size {training_args.per_device_train_batch_size} on "
            f"{training_args.world_size} process(es) gives batches of 1 pair, whose contrastive loss is "
            "0; use at least 2 pairs per step."
        )


def main(argv=None):
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    # The rows hold raw images and captions, which the collator turns into tensors.
    training_args.remove_unused_columns = False
    if training_args.label_names is None:
        training_args.label_names = []  # `mlm_labels` is an input, not the label column; keeps eval_loss

    with progress_bars(enabled=not training_args.disable_tqdm):  # --disable_tqdm: every bar, not only Trainer's
        return train(model_args, data_args, training_args, argv)


def train(model_args: ModelArguments, data_args: DataArguments, training_args, argv=None):
    """The run itself: checks, model, data, Trainer, final save; returns the trainer."""
    # Everything that can be checked before loading a model or data is checked first.
    check_one_model_source(model_args)
    check_ranges(model_args, data_args, training_args)
    stage = load_training_stage(model_args.stage)
    overrides = parse_config_overrides(model_args)
    check_batch_size(training_args)
    inputs = input_paths(model_args, data_args, training_args)
    model_dir = os.path.join(training_args.output_dir, "model")
    will_train = training_args.do_train or not training_args.do_eval
    if will_train:
        check_output_dir(model_dir, overwrite=model_args.overwrite, protect=inputs)

    model, processor = load_model_and_processor(model_args, overrides)
    apply_training_stage(model, stage)
    given = set(sys.argv[1:] if argv is None else argv)
    # The stage's recipe unless given on the command line. transformers 5 has no `warmup_ratio`: a `warmup_steps`
    # below 1 is the fraction of the run (setting a `warmup_ratio` attribute would be silently ignored).
    for flag, stage_field in (
        ("learning_rate", "learning_rate"),
        ("weight_decay", "weight_decay"),
        ("warmup_steps", "warmup_ratio"),
        ("max_grad_norm", "max_grad_norm"),
    ):
        if f"--{flag}" not in given and not any(a.startswith(f"--{flag}=") for a in given):
            setattr(training_args, flag, getattr(stage, stage_field))
    logger.info("stage %s: %s", stage.stage, stage.description)
    config = model.config
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info(
        "trainable parameters: %.2fM of %.2fM", trainable / 1e6, sum(p.numel() for p in model.parameters()) / 1e6
    )

    train, evaluation = load_splits(data_args, training_args.seed, show_progress=not training_args.disable_tqdm)
    batch = training_args.per_device_train_batch_size
    if training_args.world_size == 1 and len(train) % batch == 1 and not training_args.dataloader_drop_last:
        logger.warning(
            "the last batch of each epoch holds 1 pair (%d rows, batches of %d), whose contrastive loss "
            "is 0; pass --dataloader_drop_last or change --max_train_samples.",
            len(train),
            batch,
        )
    if data_args.tower_state_cache:
        train, evaluation = cache_splits(model, processor, train, evaluation, data_args, training_args)
        collator = TowerStateCollator()
    else:
        collator = BridgeDataCollator.for_model(
            processor, config, mlm_probability=data_args.mlm_probability, mim_probability=data_args.mim_probability
        )
    trainer = BridgeTrainer(
        model=model, args=training_args, train_dataset=train, eval_dataset=evaluation, data_collator=collator
    )
    if will_train:
        resume = training_args.resume_from_checkpoint
        if resume in ("True", "true"):
            resume = True
        result = trainer.train(resume_from_checkpoint=resume)
        trainer.log_metrics("train", result.metrics)
        if trainer.is_world_process_zero():
            save_pretrained_atomically(model_dir, model, processor, overwrite=model_args.overwrite, protect=inputs)
            logger.info("saved model and processor to %s", model_dir)
    if evaluation is not None:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
    return trainer


if __name__ == "__main__":
    sys.exit(run_command(main))
