"""NLVR2 accuracy and consistency for `evaluate` (a local module, loaded by path:
`evaluate.load("metrics/bridge_nlvr2")`).

Accuracy: the fraction of statements whose truth value is predicted. Consistency (NLVR2's second number): the
fraction of sentence groups (one sentence with each of its image pairs) whose examples are all predicted correctly;
given when `groups` are passed. With `statement_types`, accuracy is also reported per type.
"""

import datasets
import evaluate
import numpy as np


_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): the predicted truth value per statement (1 true, 0 false).
    references (`list` of `int`): the true values.
    groups (`list` of `str`, *optional*): the sentence group of each statement, for consistency.
    statement_types (`list` of `str`, *optional*): a type per statement; accuracy is then also reported per type.
Returns:
    `accuracy`, `num_statements`, and `consistency` / `num_groups` and `accuracy_<type>` on request.
Example:
    >>> metric = evaluate.load("metrics/bridge_nlvr2")
    >>> metric.compute(predictions=[1, 0], references=[1, 1], groups=["a", "a"])
    {'accuracy': 0.5, 'num_statements': 2, 'consistency': 0.0, 'num_groups': 1}
"""


class BridgeNlvr2(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, groups=None, statement_types=None):
        if len(predictions) == 0:
            raise ValueError("No statements: give at least one prediction.")
        references = np.asarray(references)
        if ((references != 0) & (references != 1)).any():
            raise ValueError("references must be 0 (false) or 1 (true); unlabelled statements cannot be scored.")
        correct = np.asarray(predictions) == references
        result = {"accuracy": float(correct.mean()), "num_statements": int(len(correct))}
        for name, values in (("groups", groups), ("statement_types", statement_types)):
            if values is not None and len(values) != len(correct):
                raise ValueError(f"Got {len(values)} {name} for {len(correct)} statements.")
        if groups is not None:
            all_correct: dict[str, bool] = {}
            for group, ok in zip(groups, correct):
                all_correct[group] = all_correct.get(group, True) and bool(ok)
            result["consistency"] = float(np.mean(list(all_correct.values())))
            result["num_groups"] = len(all_correct)
        if statement_types is not None:
            types = np.asarray(statement_types)
            for kind in sorted(set(statement_types)):
                result[f"accuracy_{kind}"] = float(correct[types == kind].mean())
        return result
