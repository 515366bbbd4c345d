"""Pipelines for BRIDGE: visual question answering, and a zero-shot image-classification class with friendlier label
handling.

Hub code: imports transformers only. A saved `BridgeForQuestionAnswering` folder carries this file and names
`BridgeVisualQuestionAnsweringPipeline` under `custom_pipelines` in its config, so that
`pipeline("visual-question-answering", model=folder, trust_remote_code=True)` answers (transformers 5 removed its own
visual-question-answering pipeline; nothing is registered globally).

Zero-shot image classification
------------------------------

`pipeline("zero-shot-image-classification", model=dir)` uses transformers' own class, unchanged: this package
registers no pipeline globally, so no other model's pipeline changes. With transformers' class, long labels are
truncated by the model itself (with a warning). Pass `pipeline_class=BridgeZeroShotImageClassificationPipeline` to
also get:

- a string `candidate_labels="a cat"` taken as one label (transformers' class iterates it character by character);
- an empty label list refused with a clear message (transformers' tokenizer raises an `IndexError`);
- labels tokenized with truncation to the model's `max_text_positions` (no warning).
"""

from transformers.image_utils import load_image
from transformers.pipelines import Pipeline, ZeroShotImageClassificationPipeline


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


class BridgeVisualQuestionAnsweringPipeline(Pipeline):
    """Answers questions about images with a VQA classifier (`BridgeForQuestionAnswering`): the `top_k` answers of
    its vocabulary with their sigmoid scores, best first.

        vqa = pipeline("visual-question-answering", model=folder, trust_remote_code=True)
        vqa(image, "what colour is the circle?")              # [{"answer": "red", "score": 0.97}, ...]
        vqa([{"image": a, "question": q1}, {"image": b, "question": q2}], top_k=1)

    `image` is a PIL image, a path or a URL; one image with a list of questions (or one question with a list of
    images) asks each. A model without an answer vocabulary (`config.id2label` left at transformers' placeholder
    LABEL_0, LABEL_1, ...) is refused rather than answering "LABEL_0".
    """

    _load_processor = True
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    def __call__(self, image, question=None, **kwargs):
        self._answer_vocabulary()  # before any image is read: a model without answers cannot answer
        if question is None:
            inputs = image  # {"image": ..., "question": ...} or a list of them
        elif isinstance(image, (list, tuple)) or isinstance(question, (list, tuple)):
            images = image if isinstance(image, (list, tuple)) else [image] * len(question)
            questions = question if isinstance(question, (list, tuple)) else [question] * len(images)
            if len(images) != len(questions):
                raise ValueError(
                    f"Got {len(images)} images and {len(questions)} questions; pass one of each per question, or one "
                    "image (or one question) for all."
                )
            inputs = [{"image": i, "question": q} for i, q in zip(images, questions)]
        else:
            inputs = {"image": image, "question": question}
        return super().__call__(inputs, **kwargs)

    def _sanitize_parameters(self, top_k=None, timeout=None, **kwargs):
        postprocess = {}
        if top_k is not None:
            if not isinstance(top_k, int) or top_k < 1:
                raise ValueError(f"top_k must be a positive integer, got {top_k!r}.")
            postprocess["top_k"] = top_k
        return {"timeout": timeout}, {}, postprocess

    def preprocess(self, inputs, timeout=None):
        if not isinstance(inputs, dict) or "image" not in inputs or "question" not in inputs:
            raise ValueError(
                "visual-question-answering takes (image, question), or dicts {'image': ..., 'question': ...}; got "
                f"{type(inputs).__name__}."
            )
        if not isinstance(inputs["question"], str) or not inputs["question"].strip():
            raise ValueError(f"The question must be a non-empty string, got {inputs['question']!r}.")
        image = load_image(inputs["image"], timeout=timeout)
        limit = self.model.config.max_text_positions
        return self.processor(
            images=image, text=inputs["question"], return_tensors="pt", truncation=True, max_length=limit
        )

    def _forward(self, model_inputs):
        return {"logits": self.model(**model_inputs).logits}

    def postprocess(self, model_outputs, top_k=5):
        scores = model_outputs["logits"][0].float().sigmoid()
        labels = self._answer_vocabulary()
        missing = [i for i in range(scores.shape[0]) if i not in labels]
        if missing:
            raise ValueError(
                f"The model scores {scores.shape[0]} answers but config.id2label names {len(labels)}: no answer for "
                f"id(s) {missing[:5]}. config.id2label must name every output of the classifier (0 to "
                f"{scores.shape[0] - 1}); set it with the answer vocabulary the model was trained with."
            )
        scores, ids = scores.topk(min(top_k, scores.shape[0]))
        return [{"answer": labels[int(i)], "score": float(s)} for s, i in zip(scores, ids)]

    def _answer_vocabulary(self) -> dict:
        """`config.id2label`, refused when it is transformers' placeholder (LABEL_0, LABEL_1, ...): a model never
        given an answer vocabulary, whose answers would be those placeholders."""
        labels = self.model.config.id2label or {}
        if labels and all(str(label) == f"LABEL_{i}" for i, label in labels.items()):
            raise ValueError(
                "This model has no answer vocabulary: its config.id2label is transformers' placeholder "
                f"({len(labels)} answers LABEL_0, LABEL_1, ...), so visual-question-answering would answer "
                "'LABEL_0'. Use a fine-tuned VQA checkpoint, or give the model its answers before training, e.g. "
                "answers = modeling_bridge.data.answer_vocabulary(train['answers']) and "
                "BridgeForQuestionAnswering.from_pretrained(base, id2label=dict(enumerate(answers)), "
                "label2id={a: i for i, a in enumerate(answers)}) (as examples/run_vqa.py does)."
            )
        return labels


# What a saved BridgeForQuestionAnswering config names under `custom_pipelines` (file name without `.py`).
VQA_CUSTOM_PIPELINES = {
    "visual-question-answering": {
        "impl": "pipelines.BridgeVisualQuestionAnsweringPipeline",
        "pt": ["AutoModelForVisualQuestionAnswering"],
        "type": "multimodal",
    }
}


__all__ = [
    "VQA_CUSTOM_PIPELINES",
    "BridgeVisualQuestionAnsweringPipeline",
    "BridgeZeroShotImageClassificationPipeline",
]
