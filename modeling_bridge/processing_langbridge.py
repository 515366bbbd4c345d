"""Processor of `BridgeForConditionalGeneration`: the vision tower's image processor and the language model's
tokenizer, with a chat template, so that `pipeline("image-text-to-text", model=folder, trust_remote_code=True)` works.

Hub code: imports only transformers and `.processing_bridge`.
"""

from transformers import BatchFeature, ProcessorMixin

from .processing_bridge import _prepare_images


# The image is always the prefix (the adapter's visual tokens come first), so the template keeps only the text of
# the messages: a user's question, and an assistant's answer when a conversation is replayed.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- if not loop.last %} {% endif -%}"
    "{%- endfor -%}"
)


class BridgeGenerationProcessor(ProcessorMixin):
    r"""
    `processor(images=..., text=..., return_tensors="pt")` gives `pixel_values` (the images, in front of the text as
    the adapter's prefix) and the language model's `input_ids` / `attention_mask` of the text (a prompt; empty for
    plain captioning). With `labels=` target texts it appends each target and the tokenizer's end-of-sequence token
    and returns `labels` that cover only the targets (-100 on the prompt and padding), for training.

    The tokenizer must have an end-of-sequence token (generation stops on it and training teaches it); a tokenizer
    without a padding token pads with it. Texts are padded to the longest and never truncated (other tokenizer
    arguments, which chat templates and pipelines pass along, are not used): the model refuses a prompt longer than
    the LM's context with a clear error instead.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        if tokenizer is not None:
            if tokenizer.eos_token is None:
                raise ValueError(
                    f"The language model's tokenizer ({type(tokenizer).__name__}) has no end-of-sequence token, which "
                    "captioning needs (generation stops on it); set one, e.g. tokenizer.eos_token = '</s>' for a "
                    "token the LM knows."
                )
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
        super().__init__(image_processor, tokenizer, chat_template=chat_template or CHAT_TEMPLATE, **kwargs)

    def __call__(self, images=None, text=None, labels=None, **kwargs):
        if images is None:
            raise ValueError("BridgeGenerationProcessor needs images: the text is generated from an image.")
        images = _prepare_images(images)
        count = len(images) if isinstance(images, list) else 1
        if text is None:
            text = [""] * count
        texts = [text] if isinstance(text, str) else list(text)
        if len(texts) != count:
            raise ValueError(f"Got {count} images and {len(texts)} texts; give one text (prompt) per image.")
        kwargs.pop("padding", None)
        return_tensors = kwargs.pop("return_tensors", "pt")
        pixel_values = self.image_processor(images, return_tensors=return_tensors)["pixel_values"]
        tokenizer = self.tokenizer
        prompts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        targets = None
        if labels is not None:
            labels = [labels] if isinstance(labels, str) else list(labels)
            if len(labels) != count:
                raise ValueError(f"Got {count} images and {len(labels)} labels; give one target text per image.")
            targets = [
                tokenizer((" " if p else "") + t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                for p, t in zip(prompts, labels)
            ]
        sequences = [p + (targets[i] if targets else []) for i, p in enumerate(prompts)]
        length = max(len(s) for s in sequences)
        # Padded on the right; the model moves each row's padding in front of the image prefix.
        batch = {
            "input_ids": [s + [tokenizer.pad_token_id] * (length - len(s)) for s in sequences],
            "attention_mask": [[1] * len(s) + [0] * (length - len(s)) for s in sequences],
        }
        if targets is not None:
            batch["labels"] = [
                [-100] * len(p) + t + [-100] * (length - len(p) - len(t)) for p, t in zip(prompts, targets)
            ]
        if length == 0:  # no prompt at all: empty (batch, 0) tensors
            batch = {key: [[] for _ in sequences] for key in batch}
        features = BatchFeature(batch, tensor_type=return_tensors)
        for key in batch:
            features[key] = features[key].long().view(count, length)
        features["pixel_values"] = pixel_values
        return features

    def post_process_image_text_to_text(self, generated_outputs, skip_special_tokens=True, **kwargs):
        return self.tokenizer.batch_decode(generated_outputs, skip_special_tokens=skip_special_tokens, **kwargs)


__all__ = ["BridgeGenerationProcessor"]
