"""Pre-train BRIDGE with one stage of the curriculum (configuration/stage_{a,b,c}.json) and the Trainer.

The model comes from a saved BRIDGE folder (`--model_name_or_path`, e.g. the previous stage's output), from two
pretrained towers (`--vision_model` + `--text_model`), or from a BridgeConfig JSON with random towers
(`--config_name configuration/bridge-tiny.json`, with `--processor_name_or_path` for the processor).
The data is bridge-shapes (`--dataset bridge-shapes`), a `datasets` folder / name with image and text columns, or
a COCO/Flickr Karpathy JSON (`--dataset annotations.json --image_root images/`).

    python examples/run_pretraining.py --stage a --vision_model google/vit-base-patch16-224 \
        --text_model bert-base-uncased --dataset coco_karpathy_train.json --image_root coco/ \
        --output_dir outputs/stage_a --per_device_train_batch_size 64 --num_train_epochs 5

`--resume_from_checkpoint` (a checkpoint folder, or `True` for the latest in `--output_dir`) continues a killed run.
The stage's learning rate, weight decay, warmup ratio and gradient clipping apply unless given on the command line.
The final model and processor are written atomically to `--output_dir/model`.
"""

import logging
import sys
from dataclasses import dataclass, field

from transformers import AutoModelForPreTraining, HfArgumentParser, TrainingArguments

import modeling_bridge  # noqa: F401  (registers BRIDGE with the Auto classes)
from modeling_bridge import BridgeConfig, BridgeForPreTraining, BridgeProcessor
from modeling_bridge.data import BridgeDataCollator, load_bridge_shapes, load_image_text_dataset
from modeling_bridge.training import BridgeTrainer, apply_training_stage, save_pretrained_atomically

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(default=None, metadata={"help": "A saved BRIDGE model folder."})
    vision_model: str | None = field(default=None, metadata={"help": "Pretrained vision tower (with --text_model)."})
    text_model: str | None = field(default=None, metadata={"help": "Pretrained text tower (with --vision_model)."})
    config_name: str | None = field(default=None, metadata={"help": "BridgeConfig JSON: random towers."})
    processor_name_or_path: str | None = field(
        default=None, metadata={"help": "Processor folder; defaults to the model folder or the two towers."})
    stage: str = field(default="a", metadata={"help": "a, b, c, or a stage JSON file."})
    fused_objective: str | None = field(
        default=None, metadata={"help": "pairwise (default) or aligned.", "choices": ["pairwise", "aligned"]})
    num_hard_negatives: int | None = field(default=None, metadata={"help": "Mined negatives per anchor."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Load Hub code for the model folder."})


@dataclass
class DataArguments:
    dataset: str = field(default="bridge-shapes", metadata={
        "help": "bridge-shapes, a datasets folder/name, or a Karpathy-style JSON (with --image_root)."})
    image_root: str | None = field(default=None, metadata={"help": "Image folder of a Karpathy JSON."})
    image_column: str = field(default="image", metadata={"help": "Image column of a datasets dataset."})
    text_column: str = field(default="caption", metadata={"help": "Text column of a datasets dataset."})
    train_split: str = field(default="train", metadata={"help": "Split used for training."})
    eval_split: str | None = field(default=None, metadata={"help": "Split used for evaluation, if any."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training set."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate the evaluation set."})
    num_shapes_train: int = field(default=4000, metadata={"help": "bridge-shapes training scenes."})
    skip_invalid: bool = field(default=False, metadata={"help": "Skip unreadable images / empty captions."})
    mlm_probability: float = field(default=0.15, metadata={"help": "Token masking rate when MLM is on."})
    mim_probability: float = field(default=0.4, metadata={"help": "Patch masking rate when MIM is on."})


def load_model_and_processor(args: ModelArguments):
    sources = [bool(args.model_name_or_path), bool(args.vision_model or args.text_model), bool(args.config_name)]
    if sum(sources) != 1:
        raise SystemExit("error: give exactly one of --model_name_or_path, --vision_model with --text_model, or "
                         "--config_name.")
    if args.num_hard_negatives is not None and args.num_hard_negatives < 1:
        raise SystemExit(f"error: --num_hard_negatives must be >= 1, got {args.num_hard_negatives}.")
    overrides = {k: v for k, v in (("fused_objective", args.fused_objective),
                                   ("num_hard_negatives", args.num_hard_negatives)) if v is not None}
    if args.model_name_or_path:
        if args.trust_remote_code:  # the folder's own code files
            model = AutoModelForPreTraining.from_pretrained(args.model_name_or_path, trust_remote_code=True,
                                                            **overrides)
        else:
            model = BridgeForPreTraining.from_pretrained(args.model_name_or_path, **overrides)
        processor_source = args.processor_name_or_path or args.model_name_or_path
        return model, BridgeProcessor.from_pretrained(processor_source, trust_remote_code=args.trust_remote_code)
    if args.vision_model or args.text_model:
        if not (args.vision_model and args.text_model):
            raise SystemExit("error: --vision_model and --text_model go together.")
        bridge = modeling_bridge.BridgeModel.from_vision_text_pretrained(args.vision_model, args.text_model,
                                                                         **overrides)
        model = BridgeForPreTraining(bridge.config, vision_model=bridge.vision_model, text_model=bridge.text_model)
        model.bridge.load_state_dict(bridge.state_dict())  # the new layers keep the initialisation just made
        processor = (BridgeProcessor.from_pretrained(args.processor_name_or_path) if args.processor_name_or_path
                     else BridgeProcessor.from_vision_text_pretrained(args.vision_model, args.text_model))
        return model, processor
    if not args.processor_name_or_path:
        raise SystemExit("error: --config_name builds random towers and needs --processor_name_or_path "
                         "(a folder with the image processor and tokenizer).")
    config = BridgeConfig.from_json_file(args.config_name)
    for key, value in overrides.items():
        setattr(config, key, value)
    return BridgeForPreTraining(config), BridgeProcessor.from_pretrained(args.processor_name_or_path)


def load_splits(args: DataArguments, seed: int):
    if args.dataset == "bridge-shapes":
        if args.eval_split not in (None, "test"):
            raise SystemExit(f"error: bridge-shapes has the splits train and test; got --eval_split {args.eval_split}.")
        data = load_bridge_shapes(num_train=args.num_shapes_train, seed=seed)
        train, evaluation = data["train"], data["test"] if args.eval_split else None
    else:
        data = load_image_text_dataset(args.dataset, image_column=args.image_column, text_column=args.text_column,
                                       image_root=args.image_root, skip_invalid=args.skip_invalid)
        if hasattr(data, "keys"):  # a DatasetDict
            if args.train_split not in data:
                raise SystemExit(f"error: no split {args.train_split!r} in {args.dataset}; it has {list(data)}.")
            train = data[args.train_split]
            evaluation = data[args.eval_split] if args.eval_split else None
        else:
            train, evaluation = data, None
    if args.max_train_samples is not None:
        train = train.select(range(min(args.max_train_samples, len(train))))
    if evaluation is not None and args.max_eval_samples is not None:
        evaluation = evaluation.select(range(min(args.max_eval_samples, len(evaluation))))
    return train, evaluation


def main(argv=None):
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    # The rows hold raw images and captions, which the collator turns into tensors.
    training_args.remove_unused_columns = False
    if training_args.label_names is None:
        training_args.label_names = []  # `mlm_labels` is an input, not the label column; keeps eval_loss

    model, processor = load_model_and_processor(model_args)
    stage = apply_training_stage(model, model_args.stage)
    given = set(sys.argv[1:] if argv is None else argv)
    for name in ("learning_rate", "weight_decay", "warmup_ratio", "max_grad_norm"):
        if f"--{name}" not in given and not any(a.startswith(f"--{name}=") for a in given):
            setattr(training_args, name, getattr(stage, name))  # the stage's recipe unless overridden
    logger.info("stage %s: %s", stage.stage, stage.description)
    config = model.config
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("trainable parameters: %.2fM of %.2fM", trainable / 1e6,
                sum(p.numel() for p in model.parameters()) / 1e6)

    train, evaluation = load_splits(data_args, training_args.seed)
    (height, width), (patch_h, patch_w) = (
        tuple(v) if isinstance(v, (list, tuple)) else (v, v)
        for v in (config.vision_config.image_size, config.vision_config.patch_size)
    )
    num_patches = (height // patch_h) * (width // patch_w)
    collator = BridgeDataCollator(
        processor,
        mlm_probability=data_args.mlm_probability if config.mlm_loss_weight > 0 else 0.0,
        mim_probability=data_args.mim_probability if config.mim_loss_weight > 0 else 0.0,
        num_patches=num_patches,
        image_column="image",
        text_column="caption",
        max_length=config.max_text_positions,
    )
    trainer = BridgeTrainer(model=model, args=training_args, train_dataset=train, eval_dataset=evaluation,
                            data_collator=collator)
    if training_args.do_train or not training_args.do_eval:
        resume = training_args.resume_from_checkpoint
        if resume in ("True", "true"):
            resume = True
        result = trainer.train(resume_from_checkpoint=resume)
        trainer.log_metrics("train", result.metrics)
        if trainer.is_world_process_zero():
            save_pretrained_atomically(training_args.output_dir + "/model", model, processor)
            logger.info("saved model and processor to %s/model", training_args.output_dir)
    if evaluation is not None:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
    return trainer


if __name__ == "__main__":
    main()
