"""BRIDGE processor: the vision tower's image processor and the text tower's tokenizer.

Hub code: imports only the standard library, transformers and `.configuration_bridge`.
"""

import os
import threading

from transformers import AutoImageProcessor, AutoTokenizer, ProcessorMixin
from transformers.image_utils import load_image

from .configuration_bridge import check_local_path


# PIL modes that hold one channel of integers or floats with a range other than 0-255: PIL's own convert("RGB")
# saturates 16-bit values to white and turns floats in [0, 1] black, so they are scaled by value range first.
_HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")
_NO_LIMIT = 1_000_000  # tokenizers without a real limit report a huge sentinel as model_max_length


def _scale_to_8_bit(image, index: int):
    """One-channel 16-bit, 32-bit integer or float image -> mode "L", by value range: 16-bit as 0-65535, floats in
    [0, 1] as fractions, values already in 0-255 as they are."""
    if image.mode.startswith("I;16"):
        image, scale = image.convert("I"), 1 / 257
    else:
        low, high = image.getextrema()
        if low >= 0 and high <= (1.0 if image.mode == "F" else 255):
            scale = 255.0 if image.mode == "F" else 1.0
        elif image.mode == "I" and low >= 0 and high <= 65535:
            scale = 1 / 257
        elif image.mode == "F" and low >= 0 and high <= 255:
            scale = 1.0
        else:
            raise ValueError(
                f"Image {index} (PIL mode {image.mode!r}) has values from {low} to {high}; scale it to [0, 1] or "
                "[0, 255] (or 16-bit 0-65535) before passing it."
            )
    return image.point(lambda value: value * scale + 0.5).convert("L")


def _prepare_image(image, index: int):
    """A file path is opened (missing files named); PIL images of any mode become RGB; arrays / tensors pass."""
    if image is None:
        raise ValueError(f"Image {index} of the batch is None; pass a PIL image, an array, or a file path.")
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if not path.startswith(("http://", "https://", "data:")) and not os.path.isfile(path):
            raise FileNotFoundError(f"Image {index}: no such file {path!r}.")
        image = load_image(path)
    if hasattr(image, "convert") and getattr(image, "mode", "RGB") != "RGB":
        if image.mode in _HIGH_DEPTH_MODES:
            image = _scale_to_8_bit(image, index)
        image = image.convert("RGB")
    return image


def _prepare_images(images):
    if isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise ValueError("BridgeProcessor got an empty list of images; pass at least one.")
        return [_prepare_image(image, i) for i, image in enumerate(images)]
    return _prepare_image(images, 0)


_SAVE_LOCK = threading.RLock()


class BridgeProcessor(ProcessorMixin):
    r"""
    Wraps an image processor and a tokenizer into one processor:
    `processor(images=..., text=..., return_tensors="pt")` gives `pixel_values`, `input_ids`, `attention_mask` (and
    `token_type_ids` where the tokenizer makes them).

    Texts are padded to the longest by default, and truncated to the tokenizer's `model_max_length` when it has one
    (set it to `config.max_text_positions`; texts still longer are truncated by the model itself, with a warning).
    Images may be PIL images of any mode, arrays, tensors or file paths: 16-bit and float images are scaled by value
    range (0-65535, [0, 1]) before the conversion to RGB, and the image processor is told to convert too
    (`do_convert_rgb`), so the zero-shot pipeline, which calls it directly, accepts grayscale and RGBA images as well.
    """

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        if image_processor is not None and getattr(image_processor, "do_convert_rgb", True) is None:
            image_processor.do_convert_rgb = True
        super().__init__(image_processor, tokenizer, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """As `ProcessorMixin.from_pretrained`; a local folder without a tokenizer or image processor is named,
        instead of failing inside the tokenizer's backend."""
        path = os.fspath(pretrained_model_name_or_path)
        if os.path.isdir(path):
            missing = []
            if not any(os.path.isfile(os.path.join(path, f)) for f in _TOKENIZER_FILES):
                missing.append("tokenizer (tokenizer_config.json)")
            if not os.path.isfile(os.path.join(path, "preprocessor_config.json")) and not os.path.isfile(
                os.path.join(path, "processor_config.json")
            ):
                missing.append("image processor (preprocessor_config.json)")
            if missing:
                raise OSError(
                    f"{path} holds no {' and no '.join(missing)}, so no BridgeProcessor can be loaded from it. Save "
                    "one there with processor.save_pretrained(folder), or build it with "
                    "BridgeProcessor.from_vision_text_pretrained(vision_tower, text_tower)."
                )
        else:
            check_local_path(path, "processor folder")
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    def save_pretrained(self, save_directory, *args, **kwargs):
        # ProcessorMixin.save_pretrained adds `auto_map` to the tokenizer's init_kwargs and deletes it afterwards:
        # two threads saving one processor at once would delete it twice (KeyError). One save at a time.
        with _SAVE_LOCK:
            return super().save_pretrained(save_directory, *args, **kwargs)

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
            limit = getattr(self.tokenizer, "model_max_length", None)
            if "truncation" not in kwargs and isinstance(limit, int) and limit < _NO_LIMIT:
                # Longer texts cannot pass the text tower anyway; saying so also silences the tokenizer's "max_length
                # is ignored" warning of tokenizers that store truncation settings (e.g. MiniLM's tokenizer.json).
                kwargs["truncation"] = True
                kwargs.setdefault("max_length", limit)  # explicit: stored truncation settings would win otherwise
        if images is not None:
            images = _prepare_images(images)
        return super().__call__(images=images, text=text, **kwargs)


__all__ = ["BridgeProcessor"]
