"""Train and evaluate BRIDGE on visual question answering with the Trainer: `BridgeForQuestionAnswering` (answers as
classes, soft VQA targets) started from a saved BRIDGE folder, towers frozen by default.

    python examples/run_vqa.py --model_name_or_path outputs/demo/bridge --output_dir outputs/vqa \
        [--dataset bridge-shapes] [--max_steps 300] [--per_device_train_batch_size 48]

Data: questions about bridge-shapes scenes (default; the test split asks about held-out colour-shape bindings), or
VQAv2 (`--dataset vqav2 --train_questions ... --train_annotations ... --eval_questions ... --eval_annotations ...
--image_root ...`). The answer vocabulary is the `--max_answers` most frequent training answers; training questions
none of whose answers is in it are skipped and counted. Evaluation reports VQA accuracy (overall and per question
type) through the local `evaluate` module `metrics/bridge_vqa`; the model goes to `<output_dir>/model` (atomically)
and the metrics to `<output_dir>/vqa_results.json`. Wrong input ends the run with one `error: ...` line.
"""

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import evaluate
import numpy as np
from transformers import AutoProcessor, HfArgumentParser, TrainingArguments

import modeling_bridge  # noqa: F401  (registers BRIDGE with the Auto classes)
from modeling_bridge import BridgeForQuestionAnswering
from modeling_bridge.command_line import check_int, check_ints, check_results_folder, check_training_arguments
from modeling_bridge.data import (
    VqaDataCollator,
    answer_vocabulary,
    load_bridge_shapes_vqa,
    load_vqav2,
    vqa_soft_targets,
)
from modeling_bridge.hub_utils import check_model_path, explain_load_error, run_command
from modeling_bridge.saving import check_output_dir, write_json_atomically
from modeling_bridge.training import BridgeTrainer, save_pretrained_atomically, set_tower_trainable_blocks


METRIC_PATH = str(Path(__file__).resolve().parents[1] / "metrics" / "bridge_vqa")


@dataclass
class VqaArguments:
    model_name_or_path: str = field(metadata={"help": "A saved BRIDGE folder (BridgeModel or BridgeForPreTraining)."})
    dataset: str = field(default="bridge-shapes", metadata={"help": "bridge-shapes or vqav2."})
    shapes_num_train: int = field(default=2000, metadata={"help": "bridge-shapes: training scenes."})
    train_questions: str | None = field(default=None, metadata={"help": "VQAv2 training questions JSON."})
    train_annotations: str | None = field(default=None, metadata={"help": "VQAv2 training annotations JSON."})
    eval_questions: str | None = field(default=None, metadata={"help": "VQAv2 evaluation questions JSON."})
    eval_annotations: str | None = field(default=None, metadata={"help": "VQAv2 evaluation annotations JSON."})
    image_root: str | None = field(default=None, metadata={"help": "VQAv2: the COCO image folder."})
    max_answers: int = field(default=3129, metadata={"help": "Size of the answer vocabulary."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate the first N questions only."})
    tower_trainable_blocks: int = field(default=0, metadata={"help": "Top blocks of each tower trained (-1: all)."})
    overwrite: bool = field(default=False, metadata={"help": "Replace <output_dir>/model if it is not a save."})


def load_data(args: VqaArguments, seed: int):
    if args.dataset == "bridge-shapes":
        data = load_bridge_shapes_vqa(num_train=args.shapes_num_train, seed=seed)
        return data["train"], data["test"]
    if args.dataset == "vqav2":
        missing = [f"--{n}" for n in ("train_questions", "eval_questions", "image_root") if getattr(args, n) is None]
        if missing:
            raise ValueError(f"--dataset vqav2 needs {', '.join(missing)}.")
        if args.train_annotations is None or args.eval_annotations is None:
            raise ValueError(
                "--dataset vqav2 needs --train_annotations and --eval_annotations (answers to learn from)."
            )
        train = load_vqav2(args.train_questions, args.train_annotations, args.image_root)
        return train, load_vqav2(args.eval_questions, args.eval_annotations, args.image_root)
    raise ValueError(f"--dataset must be bridge-shapes or vqav2, got {args.dataset!r}.")


def check_arguments(args, training_args) -> None:
    """Everything that can be wrong in the arguments, before any model or data is loaded."""
    if args.dataset not in ("bridge-shapes", "vqav2"):
        raise ValueError(f"--dataset must be bridge-shapes or vqav2, got {args.dataset!r}.")
    check_ints(args, "shapes_num_train", "max_answers")
    check_ints(args, "max_eval_samples", optional=True)
    check_int(args.tower_trainable_blocks, "--tower_trainable_blocks", minimum=-1)
    check_training_arguments(training_args)
    check_model_path(args.model_name_or_path)
    check_results_folder(
        training_args.output_dir, inputs={args.model_name_or_path: "the model folder (--model_name_or_path)"}
    )


def main(argv=None):
    parser = HfArgumentParser((VqaArguments, TrainingArguments))
    args, training_args = parser.parse_args_into_dataclasses(args=argv)
    training_args.remove_unused_columns = False  # rows hold raw images and questions
    training_args.label_names = ["labels"]
    check_arguments(args, training_args)
    model_dir = os.path.join(training_args.output_dir, "model")
    check_output_dir(model_dir, overwrite=args.overwrite, protect=[args.model_name_or_path])
    train, evaluation = load_data(args, training_args.seed)
    if args.max_eval_samples is not None:
        evaluation = evaluation.select(range(min(args.max_eval_samples, len(evaluation))))

    answers = answer_vocabulary(train["answers"], args.max_answers)
    label2id = {answer: i for i, answer in enumerate(answers)}
    learnable = [bool(vqa_soft_targets(a, label2id)) for a in train["answers"]]
    skipped = learnable.count(False)
    train = train.select([i for i, ok in enumerate(learnable) if ok])
    print(f"answer vocabulary: {len(answers)} answers; {skipped} training question(s) skipped (no answer in it)")
    if len(train) == 0:
        raise ValueError("No training question has an answer in the vocabulary; raise --max_answers.")

    try:
        model = BridgeForQuestionAnswering.from_pretrained(
            args.model_name_or_path, id2label=dict(enumerate(answers)), label2id=label2id, num_labels=len(answers)
        )
        processor = AutoProcessor.from_pretrained(args.model_name_or_path)
    except OSError as error:
        raise explain_load_error(args.model_name_or_path, "model", error) from None
    for tower in (model.bridge.vision_model, model.bridge.text_model):
        set_tower_trainable_blocks(tower, args.tower_trainable_blocks)
    metric = evaluate.load(METRIC_PATH)

    def compute_metrics(prediction):
        predicted = [answers[i] for i in np.asarray(prediction.predictions).argmax(-1)]
        return metric.compute(
            predictions=predicted, references=evaluation["answers"], question_types=evaluation["question_type"]
        )

    trainer = BridgeTrainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=evaluation,
        data_collator=VqaDataCollator(processor, label2id, model.config.max_text_positions),
        compute_metrics=compute_metrics,
        # keep only the answer logits of each eval batch (not the fused embeddings the output also holds)
        preprocess_logits_for_metrics=lambda outputs, labels: outputs[0] if isinstance(outputs, tuple) else outputs,
    )
    result = trainer.train()
    metrics = trainer.evaluate()
    save_pretrained_atomically(model_dir, model, processor, overwrite=args.overwrite)
    results = {
        "train_loss": result.metrics["train_loss"],
        "skipped_training_questions": skipped,
        "answer_vocabulary": len(answers),
        **{k.removeprefix("eval_"): v for k, v in metrics.items() if k.startswith("eval_")},
    }
    print(f"\nVQA on {args.dataset} ({len(evaluation)} questions): accuracy {results['accuracy']:.3f}")
    for key in sorted(k for k in results if k.startswith("accuracy_")):
        print(f"  {key.removeprefix('accuracy_'):<10} {results[key]:.3f}")
    path = os.path.join(training_args.output_dir, "vqa_results.json")
    write_json_atomically(path, results)
    print(f"saved the model to {model_dir}; wrote {path}")
    return results


if __name__ == "__main__":
    sys.exit(run_command(main))
