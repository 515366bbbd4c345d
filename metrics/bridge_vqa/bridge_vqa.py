"""VQA accuracy for `evaluate` (a local module, loaded by path: `evaluate.load("metrics/bridge_vqa")`).

With the VQAv2 annotation of 10 answers per question, the standard soft score: the mean, over the 10 ways of leaving
one annotator out, of min(1, (annotators among the other 9 who gave the predicted answer) / 3). With fewer than 4
reference answers (synthetic data: one true answer), the fraction of references equal to the prediction. Answers are
compared after a light normalisation (lower case, surrounding spaces and a final period removed, inner spaces
collapsed); the official script's further rules (number words, contractions, articles) are not applied.
"""

import datasets
import evaluate
import numpy as np


_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): the predicted answer per question.
    references (`list` of `list` of `str`): the annotators' answers per question.
    question_types (`list` of `str`, *optional*): a type per question; accuracy is then also reported per type.
Returns:
    `accuracy` (and `accuracy_<type>` per question type), `num_questions`.
Example:
    >>> metric = evaluate.load("metrics/bridge_vqa")
    >>> metric.compute(predictions=["red"], references=[["red"]])["accuracy"]
    1.0
"""


def normalize_answer(answer: str) -> str:
    answer = " ".join(answer.lower().split())
    return answer[:-1].rstrip() if answer.endswith(".") else answer


def vqa_score(prediction: str, answers: list[str]) -> float:
    prediction = normalize_answer(prediction)
    answers = [normalize_answer(a) for a in answers]
    if len(answers) == 0:
        raise ValueError("A question has no reference answer: VQA accuracy needs at least one.")
    matches = [a == prediction for a in answers]
    if len(answers) < 4:
        return float(np.mean(matches))
    total = sum(matches)
    return float(np.mean([min(1.0, (total - m) / 3) for m in matches]))


class BridgeVqa(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
            ),
        )

    def _compute(self, predictions, references, question_types=None):
        if len(predictions) == 0:
            raise ValueError("No questions: give at least one prediction.")
        scores = np.asarray([vqa_score(p, r) for p, r in zip(predictions, references)])
        result = {"accuracy": float(scores.mean()), "num_questions": int(len(scores))}
        if question_types is not None:
            if len(question_types) != len(scores):
                raise ValueError(f"Got {len(question_types)} question types for {len(scores)} questions.")
            types = np.asarray(question_types)
            for kind in sorted(set(question_types)):
                result[f"accuracy_{kind}"] = float(scores[types == kind].mean())
        return result
