"""BRIDGE's input checks: what a model does with inputs it cannot score (a clear error instead of a wrong result).

`BridgeInputChecks` is mixed into `BridgeModel` (images, texts, tower states); the functions below serve the task
heads (aligned pairs, labels). Hub code: imports only torch and its sibling `.towers_bridge`, so that it is saved next
to the weights with `modeling_bridge.py` and loads with ``trust_remote_code=True``.
"""

import torch
import torch.nn.functional as F
from torch import nn

from .towers_bridge import TowerGeometry


class BridgeInputChecks:
    """Checks of `BridgeModel`'s inputs (needs `self.config` and `self.text_model`)."""

    # Checks read shapes and dtypes only, except those that read values (token ids in the vocabulary, attention-mask
    # rows with at least one token, finite pixel values and tower states): on CPU they are cheap and need no device
    # sync, so they always run; on an accelerator they would force a host sync in every forward, so they run only
    # when `model.check_token_ids = True` (out-of-range ids there end in a device-side assert, NaN pixels in NaN
    # scores, instead of a message).
    check_token_ids = False

    def _reads_values(self, tensor: torch.Tensor) -> bool:
        """Whether the value checks run for `tensor` (see above); never under torch.compile (a graph break)."""
        return (tensor.device.type == "cpu" or self.check_token_ids) and not torch.compiler.is_compiling()

    def _check_finite(self, tensor: torch.Tensor, name: str, fix: str) -> None:
        if self._reads_values(tensor):
            bad = ~torch.isfinite(tensor).flatten(1).all(1)
            if bool(bad.any()):
                rows = bad.nonzero().flatten().tolist()
                shown = ", ".join(map(str, rows[:8])) + (f" and {len(rows) - 8} more" if len(rows) > 8 else "")
                raise ValueError(
                    f"{name} hold NaN or infinite values in row(s) {shown}: every score of them would be NaN. {fix}"
                )

    def _check_pixel_values(self, pixel_values):
        if not isinstance(pixel_values, torch.Tensor):
            raise TypeError(
                f"pixel_values must be a torch.Tensor, got {type(pixel_values).__name__}; prepare images "
                'with BridgeProcessor(images=..., return_tensors="pt").'
            )
        if not pixel_values.is_floating_point():
            raise ValueError(
                f"pixel_values have dtype {pixel_values.dtype}: raw integer pixels would be used unnormalised. "
                'Prepare images with BridgeProcessor(images=..., return_tensors="pt"), which rescales and normalises.'
            )
        vc = self.config.vision_config
        channels = getattr(vc, "num_channels", 3)
        # A convolutional tower takes any size (its token count is checked on its output instead).
        size = TowerGeometry(vc).image_size() or (None, None)
        if pixel_values.dim() != 4 or pixel_values.shape[1] != channels:
            raise ValueError(
                f"pixel_values must have shape (batch, {channels}, height, width), got {tuple(pixel_values.shape)}. "
                "Prepare images with BridgeProcessor(images=...)."
            )
        if pixel_values.shape[0] == 0:
            raise ValueError("No image given (pixel_values has 0 rows): pass at least one image.")
        if size[0] is not None and tuple(pixel_values.shape[-2:]) != size:
            raise ValueError(
                f"pixel_values are {tuple(pixel_values.shape[-2:])} pixels but the vision tower expects {size}; "
                "resize the images with BridgeProcessor / the model's image processor."
            )
        self._check_finite(
            pixel_values,
            "pixel_values",
            "Check those images and their preprocessing (BridgeProcessor gives finite values).",
        )

    def _check_text(self, input_ids, attention_mask, token_type_ids):
        for name, tensor in (
            ("input_ids", input_ids),
            ("attention_mask", attention_mask),
            ("token_type_ids", token_type_ids),
        ):
            if tensor is None:
                continue
            if not isinstance(tensor, torch.Tensor):
                raise TypeError(
                    f"{name} must be a torch.Tensor, got {type(tensor).__name__}; tokenize with "
                    'BridgeProcessor(text=..., return_tensors="pt").'
                )
            if tensor.is_floating_point() or tensor.is_complex():
                raise ValueError(
                    f"{name} has dtype {tensor.dtype}; it must hold integers (torch.long), as the "
                    "tokenizer returns them."
                )
            if name != "input_ids" and tuple(tensor.shape) != tuple(input_ids.shape):
                raise ValueError(
                    f"{name} has shape {tuple(tensor.shape)} but input_ids has {tuple(input_ids.shape)}: their batch "
                    "sizes and lengths must agree; tokenize texts and masks together."
                )
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (batch, sequence_length), got {tuple(input_ids.shape)}.")
        if input_ids.shape[0] == 0:
            raise ValueError("No text given (input_ids has 0 rows): pass at least one text / candidate label.")
        # Reading the ids is a host sync: on CPU it is free and the embedding's own error is obscure; on an accelerator
        # only on request. Skipped under torch.compile, where it would break the graph (an out-of-range id still
        # fails in the compiled embedding's bounds check).
        if self._reads_values(input_ids):
            self._check_token_id_range(input_ids, token_type_ids)
            if attention_mask is not None:
                self._check_attention_mask(attention_mask)

    @staticmethod
    def _check_attention_mask(attention_mask):
        if bool(((attention_mask != 0) & (attention_mask != 1)).any()):
            raise ValueError(
                f"attention_mask holds values other than 0 and 1 (from {int(attention_mask.min())} to "
                f"{int(attention_mask.max())}): 1 marks a token, 0 padding, as the tokenizer returns it."
            )
        empty = (attention_mask.sum(1) == 0).nonzero().flatten().tolist()
        if empty:
            raise ValueError(
                f"attention_mask row(s) {empty} mark no token at all: a text with no tokens has no score. Remove "
                "empty texts, or tokenize them with the model's tokenizer (it adds the special tokens)."
            )

    def _check_token_id_range(self, input_ids, token_type_ids):
        vocab_size = self.text_model.get_input_embeddings().num_embeddings
        low, high = int(input_ids.min()), int(input_ids.max())
        if low < 0 or high >= vocab_size:
            raise ValueError(
                f"input_ids hold ids from {low} to {high}, outside the text tower's vocabulary [0, {vocab_size}): "
                "tokenize with the tokenizer that belongs to this model (BridgeProcessor / AutoTokenizer of the same "
                "folder)."
            )
        type_vocab_size = getattr(self.config.text_config, "type_vocab_size", None)
        if token_type_ids is not None and type_vocab_size is not None:
            low, high = int(token_type_ids.min()), int(token_type_ids.max())
            if low < 0 or high >= type_vocab_size:
                raise ValueError(
                    f"token_type_ids hold values from {low} to {high}; the text tower has "
                    f"{type_vocab_size} token types (0 to {type_vocab_size - 1})."
                )

    def _check_states(self, vision_hidden_state, text_hidden_state, attention_mask) -> None:
        """The value checks of states handed to the public interaction methods (the model's own paths check their
        inputs once, before the towers, and call `_interact` / `_pairwise_interaction`)."""
        fix = "Pass the towers' final states (get_image_features / get_text_features) of checked inputs."
        self._check_finite(vision_hidden_state, "vision_hidden_state", fix)
        self._check_finite(text_hidden_state, "text_hidden_state", fix)
        if attention_mask is not None and self._reads_values(attention_mask):
            self._check_attention_mask(attention_mask)


def check_aligned(pixel_values, input_ids, head: str, texts: str) -> None:
    if input_ids is None or pixel_values is None:
        raise ValueError(f"{head} needs pixel_values and input_ids: image i with {texts[:-1]} i.")
    if pixel_values.shape[0] != input_ids.shape[0]:
        raise ValueError(
            f"Got {pixel_values.shape[0]} images and {input_ids.shape[0]} {texts}; each of the {texts} goes with the "
            "image of the same row, so the counts must match."
        )


def reads_label_values(model: nn.Module, labels: torch.Tensor) -> bool:
    """Whether a head checks the values of its labels. Reading them is a host sync: on CPU it is free, so always; on
    an accelerator only on the opt-in of BridgeModel's token-id range check (`check_token_ids = True` on the head or
    on its `.bridge`); never under torch.compile, where it would break the graph."""
    if torch.compiler.is_compiling():
        return False
    opted_in = getattr(model, "check_token_ids", False) or getattr(model.bridge, "check_token_ids", False)
    return labels.device.type == "cpu" or bool(opted_in)


def binary_label_loss(model: nn.Module, logits: torch.Tensor, labels, what: str) -> torch.Tensor:
    """Cross-entropy of (batch, 2) logits against 0/1 labels (-100: a row left out), with one clear error naming the
    head for labels of another type, shape, dtype or value (values: see `reads_label_values`)."""
    head = type(model).__name__
    expected = f"0 / 1 ({what}: 1 for true), or -100 to leave a row out of the loss"
    if not isinstance(labels, torch.Tensor):
        raise ValueError(
            f"{head}: labels must be a torch.Tensor of {expected}, got {type(labels).__name__}; e.g. "
            "torch.tensor([1, 0])."
        )
    if tuple(labels.shape) != (logits.shape[0],) or labels.is_floating_point() or labels.is_complex():
        raise ValueError(
            f"{head}: labels must be a (batch,) = ({logits.shape[0]},) integer tensor of 0 / 1 ({what}: 1 for true), "
            f"got {labels.dtype} of shape {tuple(labels.shape)}."
        )
    labels = labels.long()  # cross_entropy takes int64 class indices only (bool / int32 labels included)
    if reads_label_values(model, labels):
        bad = ((labels != 0) & (labels != 1) & (labels != -100)).nonzero()
        if bad.numel():
            row = int(bad[0, 0])
            raise ValueError(
                f"{head}: labels[{row}] is {int(labels[row])}; each label must be {expected} (-1 marks an unlabelled "
                "record: leave such records out of training and evaluation)."
            )
    return F.cross_entropy(logits, labels.to(logits.device))


def checked_answer_scores(model: nn.Module, labels, logits: torch.Tensor) -> torch.Tensor:
    """VQA labels as `logits`' dtype, with one clear error naming the head for labels of another type or shape, or
    (see `reads_label_values`) with a score outside [0, 1]."""
    head = type(model).__name__
    shape = tuple(logits.shape)
    if not isinstance(labels, torch.Tensor):
        raise ValueError(
            f"{head}: labels must be a torch.Tensor of soft answer scores in [0, 1] of shape (batch, num_labels) = "
            f"{shape}, got {type(labels).__name__}."
        )
    if tuple(labels.shape) != shape:
        raise ValueError(
            f"{head}: labels have shape {tuple(labels.shape)}; VQA labels are soft answer scores of shape (batch, "
            f"num_labels) = {shape}, one column per answer of config.id2label."
        )
    if labels.is_complex():
        raise ValueError(f"{head}: labels have dtype {labels.dtype}; VQA labels are real answer scores in [0, 1].")
    scores = labels.to(logits.dtype)
    if reads_label_values(model, scores):
        bad = (~((scores >= 0) & (scores <= 1))).nonzero()  # NaN included
        if bad.numel():
            row, column = (int(i) for i in bad[0])
            answer = model.config.id2label.get(column, column)
            raise ValueError(
                f"{head}: labels[{row}, {column}] (answer {answer!r}) is {float(scores[row, column])}; VQA labels are "
                "answer scores in [0, 1] (e.g. min(1, annotators / 3), as modeling_bridge.data.vqa_soft_targets "
                "gives), 0 for the answers not given."
            )
    return scores


__all__ = ["BridgeInputChecks", "binary_label_loss", "check_aligned", "checked_answer_scores", "reads_label_values"]
