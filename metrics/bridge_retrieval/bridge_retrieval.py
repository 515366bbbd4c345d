"""Retrieval metrics for `evaluate` (a local module, loaded by path: `evaluate.load("metrics/bridge_retrieval")`).

Each query has a ranking of gallery indices (best first; the full gallery, or its top-k) and one correct gallery
index. Returns recall@1/5/10 (the fraction of queries whose correct item is among the first k), and the mean and
median rank of the correct item (1 = first). A correct item missing from a (top-k) ranking is a miss for every
recall, and makes the mean and median rank unknown (None).
"""

import datasets
import evaluate
import numpy as np


_DESCRIPTION = __doc__
_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `int`): per query, gallery indices best first.
    references (`list` of `int`): per query, the index of the correct gallery item.
    gallery_size (`int`, *optional*): the gallery's size; with it, `complete_rankings` is reported.
Returns:
    `r1`, `r5`, `r10`, `mean_rank`, `median_rank` (None when a correct item is missing from its ranking),
    `num_queries`, and `complete_rankings` when `gallery_size` is given.
Example:
    >>> metric = evaluate.load("metrics/bridge_retrieval")
    >>> metric.compute(predictions=[[2, 0, 1], [1, 2, 0]], references=[0, 1])["r1"]
    0.5
"""


class BridgeRetrieval(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("int64")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, gallery_size=None):
        if len(predictions) == 0:
            raise ValueError("No queries: give at least one ranking.")
        ranks = []
        for ranking, target in zip(predictions, references):
            ranking = list(ranking)
            ranks.append(ranking.index(target) + 1 if target in ranking else np.inf)
        ranks = np.asarray(ranks, dtype=float)
        result = {f"r{k}": float((ranks <= k).mean()) for k in (1, 5, 10)}
        known = bool(np.isfinite(ranks).all())
        result.update(
            mean_rank=float(ranks.mean()) if known else None,
            median_rank=float(np.median(ranks)) if known else None,
            num_queries=int(len(ranks)),
        )
        if gallery_size is not None:
            result["complete_rankings"] = all(len(r) >= gallery_size for r in predictions)
        return result
