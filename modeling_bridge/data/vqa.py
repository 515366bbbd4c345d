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

import os

import torch
from datasets import Dataset, DatasetDict, Features, Image, List, Value

from ._json_files import describe, field, is_integer, is_nonempty_string, is_string, json_type, read_json
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


_QUESTIONS_FILE = (
    'a VQAv2 questions file (v2_OpenEnded_mscoco_*_questions.json): an object {"data_subtype": "val2014", '
    '"questions": [{"image_id": 42, "question": "...", "question_id": 7}, ...]}'
)
_ANNOTATIONS_FILE = (
    'a VQAv2 annotations file (v2_mscoco_*_annotations.json): an object {"annotations": [{"question_id": 7, '
    '"multiple_choice_answer": "yes", "answers": [{"answer": "yes", ...}, ...], "answer_type": "yes/no"}, ...]}'
)


def _top_level_list(document, path, key: str, other: str, expected: str) -> list:
    """`document[key]`, the list of records of a VQAv2 file; the file holding `other` instead (the questions and
    annotations files swapped) is named as such."""
    if isinstance(document, dict) and key not in document and other in document:
        raise ValueError(
            f"{path} holds VQAv2 {other} (it has {other!r}, no {key!r}): the questions and annotations files look "
            "swapped; call load_vqav2(questions_file, annotations_file, image_root) with the "
            "v2_OpenEnded_mscoco_*_questions.json file first."
        )
    if not isinstance(document, dict):
        raise ValueError(f"{path} is {json_type(document)}; expected {expected}.")
    records = field(
        document, key, str(path), f"a non-empty list; the file must be {expected}", lambda v: isinstance(v, list)
    )
    if not records:
        raise ValueError(f"{path}: {key!r} is an empty list; expected {expected}.")
    return records


def _record(records: list, index: int, path, key: str, expected: str) -> tuple[dict, str]:
    where = f"{path}, {key}[{index}]"
    if not isinstance(records[index], dict):
        raise ValueError(f"{where} is {describe(records[index])}; expected an object, one record of {expected}.")
    return records[index], where


def _read_annotations(annotations_file) -> dict[int, dict]:
    """question_id -> checked annotation: the answers, the most common answer and the answer type."""
    document = read_json(annotations_file, _ANNOTATIONS_FILE)
    records = _top_level_list(document, annotations_file, "annotations", "questions", _ANNOTATIONS_FILE)
    annotations: dict[int, dict] = {}
    first_index: dict[int, int] = {}
    for index in range(len(records)):
        note, where = _record(records, index, annotations_file, "annotations", _ANNOTATIONS_FILE)
        question_id = field(note, "question_id", where, "an integer", is_integer)
        if question_id in annotations:
            raise ValueError(
                f"{where}: question_id {question_id} is also that of annotations[{first_index[question_id]}]; each "
                "question has one annotation."
            )
        answers = field(note, "answers", where, 'a list of {"answer": "..."} objects', lambda v: isinstance(v, list))
        texts = []
        for k, answer in enumerate(answers):
            if not isinstance(answer, dict):
                raise ValueError(
                    f'{where}: answers[{k}] is {describe(answer)}; expected an object {{"answer": "...", ...}}.'
                )
            texts.append(field(answer, "answer", f"{where}, answers[{k}]", "a string", is_string))
        annotations[question_id] = {
            "answers": texts,
            "answer": field(note, "multiple_choice_answer", where, "a string (the most common answer)", is_string),
            "answer_type": field(note, "answer_type", where, "a string", is_string, optional=True, default=""),
        }
        first_index[question_id] = index
    return annotations


def load_vqav2(
    questions_file: str | os.PathLike, annotations_file: str | os.PathLike | None, image_root: str
) -> Dataset:
    """VQAv2 (`v2_OpenEnded_mscoco_*_questions.json`, `v2_mscoco_*_annotations.json`, and the COCO image folder) in
    the schema above. Images are found as `<image_root>/<name>` where name is COCO's `COCO_<split>_<12-digit id>.jpg`
    or `<12-digit id>.jpg`. Without annotations (test-dev), `answers` is empty and `answer` is "". A missing image
    or a question without annotation is an error naming it.

    Both files are checked: an empty file, invalid JSON, the two files swapped, a missing or empty record list, a
    record that is not an object, a missing or mistyped field (image_id and question_id integers, question a
    non-empty string; answers a list of {"answer": string}, multiple_choice_answer a string) or a repeated
    question_id is a ValueError naming the file, the record (its index in the list) and the field."""
    document = read_json(questions_file, _QUESTIONS_FILE)
    records = _top_level_list(document, questions_file, "questions", "annotations", _QUESTIONS_FILE)
    split = field(document, "data_subtype", str(questions_file), 'a string such as "val2014"', is_string, True, "")
    annotations = {} if annotations_file is None else _read_annotations(annotations_file)
    columns = {name: [] for name in VQA_FEATURES}
    first_index: dict[int, int] = {}
    for index in range(len(records)):
        q, where = _record(records, index, questions_file, "questions", _QUESTIONS_FILE)
        image_id = field(q, "image_id", where, "a non-negative integer (the COCO image id)", _non_negative_integer)
        question_id = field(q, "question_id", where, "an integer", is_integer)
        question = field(q, "question", where, "a non-empty string", is_nonempty_string)
        if question_id in first_index:
            raise ValueError(
                f"{where}: question_id {question_id} is also that of questions[{first_index[question_id]}]; "
                "question ids are unique."
            )
        first_index[question_id] = index
        candidates = [f"COCO_{split}_{image_id:012d}.jpg", f"{image_id:012d}.jpg"]
        path = next(
            (os.path.join(image_root, c) for c in candidates if os.path.isfile(os.path.join(image_root, c))), None
        )
        if path is None:
            raise FileNotFoundError(
                f"VQAv2 question {question_id}: no image {' or '.join(candidates)} in {image_root}."
            )
        if annotations_file is not None and question_id not in annotations:
            raise ValueError(f"VQAv2 question {question_id} has no entry in {annotations_file}.")
        note = annotations.get(question_id, {})
        columns["image"].append(path)
        columns["question"].append(question)
        columns["answers"].append(note.get("answers", []))
        columns["answer"].append(note.get("answer", ""))
        columns["question_type"].append(note.get("answer_type", ""))
        columns["question_id"].append(question_id)
    return Dataset.from_dict(columns, features=VQA_FEATURES)


def _non_negative_integer(value) -> bool:
    return is_integer(value) and value >= 0


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


class VqaDataCollator:
    """Batches of VQA rows for `BridgeForQuestionAnswering`: images and questions through the processor (truncated to
    `max_length`, e.g. `config.max_text_positions`), and the soft answer scores over `label2id` as `labels`."""

    def __init__(self, processor, label2id: dict[str, int], max_length: int):
        self.processor, self.label2id, self.max_length = processor, label2id, max_length

    def __call__(self, rows):
        batch = self.processor(
            images=[row["image"] for row in rows],
            text=[row["question"] for row in rows],
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=self.max_length,
        )
        labels = torch.zeros(len(rows), len(self.label2id))
        for i, row in enumerate(rows):
            for label, score in vqa_soft_targets(row["answers"], self.label2id).items():
                labels[i, label] = score
        batch["labels"] = labels
        return dict(batch)


__all__ = [
    "VQA_FEATURES",
    "VqaDataCollator",
    "answer_vocabulary",
    "load_bridge_shapes_vqa",
    "load_vqav2",
    "vqa_soft_targets",
]
