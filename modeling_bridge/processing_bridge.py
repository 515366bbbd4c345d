"""BRIDGE processor: the vision tower's image processor and the text tower's tokenizer.

Hub code: imports only the standard library and transformers.
"""

from transformers import AutoImageProcessor, AutoTokenizer, ProcessorMixin


def _to_rgb(images):
    """Convert PIL images of any mode (grayscale, RGBA, palette...) to RGB; leave arrays and tensors alone."""
    if isinstance(images, (list, tuple)):
        return [_to_rgb(image) for image in images]
    if hasattr(images, "convert") and getattr(images, "mode", "RGB") != "RGB":
        return images.convert("RGB")
    return images


class BridgeProcessor(ProcessorMixin):
    r"""
    Wraps an image processor and a tokenizer into one processor:
    `processor(images=..., text=..., return_tensors="pt")` gives `pixel_values`, `input_ids`, `attention_mask` (and
    `token_type_ids` where the tokenizer makes them).

    Texts are padded to the longest by default; pass `truncation=True, max_length=config.max_text_positions` for
    texts that may exceed the model's positions. Images in any PIL mode are converted to RGB, and the image
    processor is told to convert too (`do_convert_rgb`), so the zero-shot pipeline, which calls it directly, accepts
    grayscale and RGBA images as well.
    """

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        if image_processor is not None and getattr(image_processor, "do_convert_rgb", True) is None:
            image_processor.do_convert_rgb = True
        super().__init__(image_processor, tokenizer, **kwargs)

    @classmethod
    def from_vision_text_pretrained(cls, vision_model_name_or_path: str, text_model_name_or_path: str, **kwargs):
        """The image processor of the vision tower and the tokenizer of the text tower (the pairing of
        `BridgeModel.from_vision_text_pretrained`); `kwargs` go to both `from_pretrained` calls."""
        image_processor = AutoImageProcessor.from_pretrained(vision_model_name_or_path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(text_model_name_or_path, **kwargs)
        return cls(image_processor=image_processor, tokenizer=tokenizer)

    def __call__(self, images=None, text=None, **kwargs):
        if images is None and text is None:
            raise ValueError("BridgeProcessor needs images, text, or both; got neither.")
        if isinstance(text, (list, tuple)) and len(text) == 0:
            raise ValueError("BridgeProcessor got an empty list of texts; pass at least one.")
        if text is not None:
            kwargs.setdefault("padding", True)
        if images is not None:
            images = _to_rgb(images)
        return super().__call__(images=images, text=text, **kwargs)


__all__ = ["BridgeProcessor"]
