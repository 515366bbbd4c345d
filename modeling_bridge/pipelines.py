"""An optional zero-shot image-classification pipeline class with friendlier label handling for BRIDGE.

`pipeline("zero-shot-image-classification", model=dir)` uses transformers' own class, unchanged: this package
registers no pipeline globally, so no other model's pipeline changes. With transformers' class, long labels are
truncated by the model itself (with a warning). Pass `pipeline_class=BridgeZeroShotImageClassificationPipeline` to
also get:

- a string `candidate_labels="a cat"` taken as one label (transformers' class iterates it character by character);
- an empty label list refused with a clear message (transformers' tokenizer raises an `IndexError`);
- labels tokenized with truncation to the model's `max_text_positions` (no warning).
"""

from transformers.pipelines import ZeroShotImageClassificationPipeline


class BridgeZeroShotImageClassificationPipeline(ZeroShotImageClassificationPipeline):
    def preprocess(self, image, candidate_labels=None, *args, tokenizer_kwargs=None, **kwargs):
        if isinstance(candidate_labels, str):
            candidate_labels = [candidate_labels]
        if not candidate_labels:
            raise ValueError(
                "zero-shot-image-classification got no candidate_labels; pass a non-empty list, e.g. "
                'candidate_labels=["a cat", "a dog"].'
            )
        limit = getattr(self.model.config, "max_text_positions", None)
        if limit is not None:
            tokenizer_kwargs = {"truncation": True, "max_length": limit, **(tokenizer_kwargs or {})}
        return super().preprocess(image, candidate_labels, *args, tokenizer_kwargs=tokenizer_kwargs, **kwargs)


__all__ = ["BridgeZeroShotImageClassificationPipeline"]
