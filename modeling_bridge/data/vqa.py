"""Visual question answering data: questions about bridge-shapes scenes (offline, with held-out bindings), and a
loader for the VQAv2 format, both in one `datasets` schema.

Schema: `image` (`datasets.Image`), `question`, `answers` (the annotators' answers, 10 in VQAv2; here the one true
answer, once), `answer` (the most common one), `question_type`, `question_id`.

bridge-shapes questions, per scene (from `load_bridge_shapes`, same splits: the test split's scenes are the held-out
families, so answering "what colour is the circle?" there needs a colour-shape binding never seen in training):

- colour: "what colour is the circle?" -> "red", for each object;
- shape: "what shape is the red one?" -> "circle", for each object;
- relation (two-object scenes): "is the red circle left of the blue square?" -> "yes", and the reversed question
  -> "no".
"""

from __future__ import annotations

import json
import os

from datasets import Dataset, DatasetDict, Features, Image, List, Value

from .shapes import load_bridge_shapes


VQA_FEATURES = Features(
    {
        "image": Image(),
        "question": Value("string"),
        "answers": List(Value("string")),
        "answer": Value("string"),
        "question_type": Value("string"),
        "question_id": Value("int64"),
    }
)


def _phrase(color: str, shape: str) -> str:
    return f"the {color} {shape}"


def _scene_questions(colors, shapes, relation) -> list[tuple[str, str, str]]:
    questions = []
    for color, shape in zip(colors, shapes):
        questions.append((f"what colour is the {shape}?", color, "color"))
        questions.append((f"what shape is the {color} one?", shape, "shape"))
    if relation != "none":
        first, second = _phrase(colors[0], shapes[0]), _phrase(colors[1], shapes[1])
        questions.append((f"is {first} {relation} {second}?", "yes", "relation"))
        questions.append((f"is {second} {relation} {first}?", "no", "relation"))
    return questions


def _questions_split(scenes: Dataset, first_id: int) -> Dataset:
    columns = {name: [] for name in VQA_FEATURES}
    question_id = first_id
    images = scenes.cast_column("image", Image(decode=False))["image"]  # the PNG bytes, not decoded and re-encoded
    for image, colors, shapes, relation in zip(images, scenes["colors"], scenes["shapes"], scenes["relation"]):
        for question, answer, kind in _scene_questions(colors, shapes, relation):
            columns["image"].append(image)
            columns["question"].append(question)
            columns["answers"].append([answer])
            columns["answer"].append(answer)
            columns["question_type"].append(kind)
            columns["question_id"].append(question_id)
            question_id += 1
    return Dataset.from_dict(columns, features=VQA_FEATURES)


def load_bridge_shapes_vqa(
    num_train: int = 2000, image_size: int = 64, seed: int = 0, split_seed: int = 0
) -> DatasetDict:
    """Questions about bridge-shapes scenes (module docstring) as a `DatasetDict` with "train" (about 5.7 questions
    per scene of `num_train` scenes) and "test" (the 144 held-out scenes, 6 questions each)."""
    scenes = load_bridge_shapes(num_train=num_train, image_size=image_size, seed=seed, split_seed=split_seed)
    train = _questions_split(scenes["train"], first_id=0)
    return DatasetDict({"train": train, "test": _questions_split(scenes["test"], first_id=len(train))})


def load_vqav2(
    questions_file: str | os.PathLike, annotations_file: str | os.PathLike | None, image_root: str
) -> Dataset:
    """VQAv2 (`v2_OpenEnded_mscoco_*_questions.json`, `v2_mscoco_*_annotations.json`, and the COCO image folder) in
    the schema above. Images are found as `<image_root>/<name>` where name is COCO's `COCO_<split>_<12-digit id>.jpg`
    or `<12-digit id>.jpg`. Without annotations (test-dev), `answers` is empty and `answer` is "". A missing image
    or a question without annotation is an error naming it."""
    with open(questions_file, encoding="utf-8") as f:
        questions = json.load(f)
    split = questions.get("data_subtype", "")
    annotations = {}
    if annotations_file is not None:
        with open(annotations_file, encoding="utf-8") as f:
            annotations = {a["question_id"]: a for a in json.load(f)["annotations"]}
    columns = {name: [] for name in VQA_FEATURES}
    for q in questions["questions"]:
        candidates = [f"COCO_{split}_{q['image_id']:012d}.jpg", f"{q['image_id']:012d}.jpg"]
        path = next(
            (os.path.join(image_root, c) for c in candidates if os.path.isfile(os.path.join(image_root, c))), None
        )
        if path is None:
            raise FileNotFoundError(
                f"VQAv2 question {q['question_id']}: no image {' or '.join(candidates)} in {image_root}."
            )
        if annotations_file is not None and q["question_id"] not in annotations:
            raise ValueError(f"VQAv2 question {q['question_id']} has no entry in {annotations_file}.")
        note = annotations.get(q["question_id"], {})
        columns["image"].append(path)
        columns["question"].append(q["question"])
        columns["answers"].append([a["answer"] for a in note.get("answers", [])])
        columns["answer"].append(note.get("multiple_choice_answer", ""))
        columns["question_type"].append(note.get("answer_type", ""))
        columns["question_id"].append(q["question_id"])
    return Dataset.from_dict(columns, features=VQA_FEATURES)


def answer_vocabulary(answers_per_question, max_answers: int | None = None) -> list[str]:
    """The answers given in the data, most frequent first (ties alphabetically), at most `max_answers`: the labels of
    a VQA classifier (VQAv2 models commonly keep the 3129 most frequent)."""
    counts: dict[str, int] = {}
    for answers in answers_per_question:
        for answer in set(a.strip().lower() for a in answers):
            counts[answer] = counts.get(answer, 0) + 1
    ranked = sorted(counts, key=lambda a: (-counts[a], a))
    return ranked if max_answers is None else ranked[:max_answers]


def vqa_soft_targets(answers: list[str], label2id: dict[str, int]) -> dict[int, float]:
    """Training target of one question: label id -> score, min(1, count / 3) over 10 VQAv2 annotators, count / n
    for fewer than 4 answers (one synthetic answer -> 1). Answers outside `label2id` get no column; an empty dict
    means the question cannot be learnt with this vocabulary."""
    normalized = [a.strip().lower() for a in answers]
    targets = {}
    for answer in set(normalized):
        if answer in label2id:
            count = normalized.count(answer)
            targets[label2id[answer]] = min(1.0, count / 3) if len(normalized) >= 4 else count / len(normalized)
    return targets


__all__ = ["VQA_FEATURES", "answer_vocabulary", "load_bridge_shapes_vqa", "load_vqav2", "vqa_soft_targets"]
