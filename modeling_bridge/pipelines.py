"""Zero-shot image classification pipeline with a clear error for an empty label list.

transformers' own pipeline fails with an `IndexError` deep inside the tokenizer when `candidate_labels` is empty.
Importing `modeling_bridge` registers this subclass for the task; it changes nothing else.
"""

import logging

from transformers.pipelines import PIPELINE_REGISTRY, ZeroShotImageClassificationPipeline
from transformers.pipelines import base as pipelines_base


class BridgeZeroShotImageClassificationPipeline(ZeroShotImageClassificationPipeline):
    def preprocess(self, image, candidate_labels=None, *args, **kwargs):
        if not candidate_labels:
            raise ValueError(
                "zero-shot-image-classification got no candidate_labels; pass a non-empty list, e.g. "
                'candidate_labels=["a cat", "a dog"].'
            )
        return super().preprocess(image, candidate_labels, *args, **kwargs)


def register_zero_shot_pipeline():
    task = "zero-shot-image-classification"
    current = PIPELINE_REGISTRY.supported_tasks[task]
    if current["impl"] is BridgeZeroShotImageClassificationPipeline:
        return
    # Re-registering a built-in task logs an "Overwriting" warning on every import; it is intended here.
    logger = logging.getLogger(pipelines_base.__name__)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        PIPELINE_REGISTRY.register_pipeline(
            task,
            pipeline_class=BridgeZeroShotImageClassificationPipeline,
            pt_model=current.get("pt", ()),
            default=current.get("default"),
            type=current.get("type"),
        )
    finally:
        logger.setLevel(level)
