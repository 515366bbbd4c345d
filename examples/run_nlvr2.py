"""Train and evaluate BRIDGE on visual reasoning (NLVR2-style) with the Trainer: `BridgeForVisualReasoning` (a
statement about a left and a right image, true or false) started from a saved BRIDGE folder, towers frozen by default.

    python examples/run_nlvr2.py --model_name_or_path outputs/demo/bridge --output_dir outputs/nlvr2 \
        [--dataset bridge-shapes] [--max_steps 300] [--per_device_train_batch_size 32]

Data: statements about pairs of bridge-shapes scenes (default; the test split's binding statements are about
colour-shape bindings never trained), or NLVR2 (`--dataset nlvr2 --train_file train.json --eval_file dev.json
--train_image_root ... --eval_image_root ...`). Evaluation reports accuracy, consistency and accuracy per statement
type through the local `evaluate` module `metrics/bridge_nlvr2`; the model goes to `<output_dir>/model`
(atomically) and the metrics to `<output_dir>/nlvr2_results.json`. Wrong input ends the run with one `error: ...`
line.
"""

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import evaluate
import numpy as np
from transformers import AutoProcessor, HfArgumentParser, TrainingArguments

import modeling_bridge  # noqa: F401  (registers BRIDGE with the Auto classes)
from modeling_bridge import BridgeForVisualReasoning
from modeling_bridge.command_line import check_int, check_ints, check_results_folder, check_training_arguments
from modeling_bridge.data import Nlvr2DataCollator, load_bridge_shapes_nlvr2, load_nlvr2
from modeling_bridge.hub_utils import check_model_path, explain_load_error, run_command
from modeling_bridge.saving import check_output_dir, write_json_atomically
from modeling_bridge.training import BridgeTrainer, save_pretrained_atomically, set_tower_trainable_blocks


METRIC_PATH = str(Path(__file__).resolve().parents[1] / "metrics" / "bridge_nlvr2")


@dataclass
class Nlvr2Arguments:
    model_name_or_path: str = field(metadata={"help": "A saved BRIDGE folder (BridgeModel or BridgeForPreTraining)."})
    dataset: str = field(default="bridge-shapes", metadata={"help": "bridge-shapes or nlvr2."})
    shapes_num_train: int = field(default=2000, metadata={"help": "bridge-shapes: training scenes."})
    train_file: str | None = field(default=None, metadata={"help": "NLVR2 training records (JSON lines)."})
    eval_file: str | None = field(default=None, metadata={"help": "NLVR2 evaluation records (JSON lines)."})
    train_image_root: str | None = field(default=None, metadata={"help": "NLVR2: the training image folder."})
    eval_image_root: str | None = field(default=None, metadata={"help": "NLVR2: the evaluation image folder."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate the first N statements only."})
    tower_trainable_blocks: int = field(default=0, metadata={"help": "Top blocks of each tower trained (-1: all)."})
    overwrite: bool = field(default=False, metadata={"help": "Replace <output_dir>/model if it is not a save."})


def load_data(args: Nlvr2Arguments, seed: int):
    if args.dataset == "bridge-shapes":
        data = load_bridge_shapes_nlvr2(num_train=args.shapes_num_train, seed=seed)
        return data["train"], data["test"]
    if args.dataset == "nlvr2":
        names = ("train_file", "eval_file", "train_image_root", "eval_image_root")
        missing = [f"--{name}" for name in names if getattr(args, name) is None]
        if missing:
            raise ValueError(f"--dataset nlvr2 needs {', '.join(missing)}.")
        train = load_nlvr2(args.train_file, args.train_image_root)
        evaluation = load_nlvr2(args.eval_file, args.eval_image_root)
        for name, split in (("train", train), ("eval", evaluation)):
            if -1 in split["label"]:
                raise ValueError(f"--{name}_file has statements without a label; training and evaluation need them.")
        return train, evaluation
    raise ValueError(f"--dataset must be bridge-shapes or nlvr2, got {args.dataset!r}.")


def check_arguments(args, training_args) -> None:
    """Everything that can be wrong in the arguments, before any model or data is loaded."""
    if args.dataset not in ("bridge-shapes", "nlvr2"):
        raise ValueError(f"--dataset must be bridge-shapes or nlvr2, got {args.dataset!r}.")
    check_ints(args, "shapes_num_train")
    check_ints(args, "max_eval_samples", optional=True)
    check_int(args.tower_trainable_blocks, "--tower_trainable_blocks", minimum=-1)
    check_training_arguments(training_args)
    check_model_path(args.model_name_or_path)
    check_results_folder(
        training_args.output_dir, inputs={args.model_name_or_path: "the model folder (--model_name_or_path)"}
    )


def main(argv=None):
    parser = HfArgumentParser((Nlvr2Arguments, TrainingArguments))
    args, training_args = parser.parse_args_into_dataclasses(args=argv)
    training_args.remove_unused_columns = False  # rows hold raw images and statements
    training_args.label_names = ["labels"]
    check_arguments(args, training_args)
    model_dir = os.path.join(training_args.output_dir, "model")
    check_output_dir(model_dir, overwrite=args.overwrite, protect=[args.model_name_or_path])
    train, evaluation = load_data(args, training_args.seed)
    if args.max_eval_samples is not None:
        evaluation = evaluation.select(range(min(args.max_eval_samples, len(evaluation))))

    try:
        model = BridgeForVisualReasoning.from_pretrained(
            args.model_name_or_path, id2label={0: "False", 1: "True"}, label2id={"False": 0, "True": 1}
        )
        processor = AutoProcessor.from_pretrained(args.model_name_or_path)
    except OSError as error:
        raise explain_load_error(args.model_name_or_path, "model", error) from None
    for tower in (model.bridge.vision_model, model.bridge.text_model):
        set_tower_trainable_blocks(tower, args.tower_trainable_blocks)
    metric = evaluate.load(METRIC_PATH)

    def compute_metrics(prediction):
        return metric.compute(
            predictions=np.asarray(prediction.predictions).argmax(-1),
            references=evaluation["label"],
            groups=evaluation["group"],
            statement_types=evaluation["statement_type"] if any(evaluation["statement_type"]) else None,
        )

    trainer = BridgeTrainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=evaluation,
        data_collator=Nlvr2DataCollator(processor, model.config.max_text_positions),
        compute_metrics=compute_metrics,
        # keep only the true/false logits of each eval batch (not the fused embeddings the output also holds)
        preprocess_logits_for_metrics=lambda outputs, labels: outputs[0] if isinstance(outputs, tuple) else outputs,
    )
    result = trainer.train()
    metrics = trainer.evaluate()
    save_pretrained_atomically(model_dir, model, processor, overwrite=args.overwrite)
    results = {
        "train_loss": result.metrics["train_loss"],
        **{k.removeprefix("eval_"): v for k, v in metrics.items() if k.startswith("eval_")},
    }
    print(
        f"\nNLVR2 on {args.dataset} ({len(evaluation)} statements): accuracy {results['accuracy']:.3f}, "
        f"consistency {results['consistency']:.3f}"
    )
    for key in sorted(k for k in results if k.startswith("accuracy_")):
        print(f"  {key.removeprefix('accuracy_'):<10} {results[key]:.3f}")
    path = os.path.join(training_args.output_dir, "nlvr2_results.json")
    write_json_atomically(path, results)
    print(f"saved the model to {model_dir}; wrote {path}")
    return results


if __name__ == "__main__":
    sys.exit(run_command(main))
