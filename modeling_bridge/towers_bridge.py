"""How BRIDGE reads its towers: the geometry of each tower family, in one table.

A tower is any transformers encoder. BRIDGE needs to know, from the tower's config alone: the width of the tokens it
emits, whether it emits a token sequence or a convolutional feature map, how many tokens come before the patches
(CLS, registers), the patch grid (MIM masks, the collator), how its output becomes tokens, how it is built without
a pooling layer, and where its attention projections are (LoRA). `TowerGeometry(config)` answers all of it; the
families that differ from the defaults are one `TowerType` row each in `TOWER_TYPES`, keyed by `model_type`. A new
tower type is a row there plus a test case.

Hub code: imports only the standard library and transformers (torch for type hints), so that it is saved next to
the weights and loads with ``trust_remote_code=True``.
"""

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from transformers import AutoModel, PreTrainedModel


if TYPE_CHECKING:
    import torch


# Leaf names of the query/key/value linears of the attention in common towers: v5 ViT, DINOv2, CLIP, SigLIP use
# q_proj/k_proj/v_proj; BERT, RoBERTa, ELECTRA query/key/value; DistilBERT, T5 q/k/v; fused projections qkv
# (DINOv3-style), Wqkv (ModernBERT), query_key_value. Output projections are left out on purpose: their names
# (`output.dense` in BERT) collide with the feed-forward's, and q/k/v is the usual LoRA placement.
ATTENTION_PROJECTIONS = frozenset(
    {"q_proj", "k_proj", "v_proj", "query", "key", "value", "q", "k", "v", "q_lin", "k_lin", "v_lin", "qkv", "Wqkv"}
    | {"query_key_value"}
)


@dataclass(frozen=True)
class TowerType:
    """How one family of towers differs from a ViT-style encoder.

    convolutional: the tower returns a (batch, channels, height, width) map; BRIDGE reads its cells as tokens in
        raster order (no prefix token). Its token count depends on the image size, so `num_vision_positions` is set
        in BridgeConfig.
    width_field: the config field holding the token width; a list field (per stage) means its last entry.
    class_token: a transformer tower puts a CLS token before its patches (SigLIP does not).
    position_offset: text towers whose position ids start after the padding index (RoBERTa and its kin), so that
        `pad_token_id + 1` positions are unusable.
    attention_projections: leaf names of the query/key/value linears inside the tower's blocks (what a LoRA adapts
        by default); empty for a tower without attention.
    """

    convolutional: bool = False
    width_field: str = "hidden_size"
    class_token: bool = True
    position_offset: bool = False
    attention_projections: frozenset = ATTENTION_PROJECTIONS


_CONVOLUTIONAL = TowerType(convolutional=True, width_field="hidden_sizes", attention_projections=frozenset())
_OFFSET_POSITIONS = TowerType(position_offset=True)

# The families that differ from a ViT/BERT-style encoder. Any other config with `hidden_sizes` and no `hidden_size`
# is read as a convolutional tower (ResNet, ConvNeXt, RegNet, ...); anything else as a ViT/BERT-style one.
TOWER_TYPES = {
    "siglip_vision_model": TowerType(class_token=False),
    "resnet": _CONVOLUTIONAL,
    "convnext": _CONVOLUTIONAL,
    "convnextv2": _CONVOLUTIONAL,
    # EfficientNet's last map is its head convolution's output, `hidden_dim` channels.
    "efficientnet": TowerType(convolutional=True, width_field="hidden_dim", attention_projections=frozenset()),
    "roberta": _OFFSET_POSITIONS,
    "xlm-roberta": _OFFSET_POSITIONS,
    "xlm-roberta-xl": _OFFSET_POSITIONS,
    "camembert": _OFFSET_POSITIONS,
    "roberta-prelayernorm": _OFFSET_POSITIONS,
    "data2vec-text": _OFFSET_POSITIONS,
}


def _pair(value) -> tuple:
    return tuple(value) if isinstance(value, (list, tuple)) else (value, value)


class TowerGeometry:
    """What BRIDGE reads from one tower's config (`TowerGeometry(config.vision_config)`)."""

    def __init__(self, config):
        self.config = config
        model_type = getattr(config, "model_type", "")
        if model_type in TOWER_TYPES:
            self.type = TOWER_TYPES[model_type]
        elif getattr(config, "hidden_size", None) is None and getattr(config, "hidden_sizes", None):
            self.type = _CONVOLUTIONAL
        else:
            self.type = TowerType()

    @property
    def convolutional(self) -> bool:
        return self.type.convolutional

    @property
    def attention_projections(self) -> frozenset:
        return self.type.attention_projections

    @property
    def hidden_size(self) -> int | None:
        """Width of the tokens the tower emits (None when its config does not say)."""
        width = getattr(self.config, self.type.width_field, None)
        if isinstance(width, (list, tuple)):
            return width[-1] if width else None
        return width

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches: CLS (if the family has one) and register tokens; none for a feature map."""
        if self.convolutional:
            return 0
        registers = int(getattr(self.config, "num_register_tokens", 0) or 0)
        return int(self.type.class_token) + registers

    def patch_grid(self) -> tuple[int, int]:
        """(rows, columns) of patches for an image of the configured size (a transformer tower)."""
        image_size, patch_size = getattr(self.config, "image_size", None), getattr(self.config, "patch_size", None)
        if self.convolutional or image_size is None or patch_size is None:
            raise ValueError(self._no_grid_message())
        (height, width), (patch_h, patch_w) = _pair(image_size), _pair(patch_size)
        return height // patch_h, width // patch_w

    def num_positions(self) -> int:
        """Tokens the vision tower emits for an image of its configured size (patches, CLS, registers)."""
        rows, columns = self.patch_grid()
        return rows * columns + self.num_prefix_tokens

    def image_size(self) -> tuple[int, int] | None:
        """The (height, width) a transformer tower requires; None for a feature map (any size gives a map)."""
        size = None if self.convolutional else getattr(self.config, "image_size", None)
        return None if size is None else _pair(size)

    def mim_patch_size(self, image_size: tuple[int, int], num_positions: int) -> tuple[int, int]:
        """Pixels per masked unit of MIM: the tower's patch, or for a convolutional tower the image area of one cell
        of its (square) last feature map of `num_positions` cells."""
        if not self.convolutional:
            return _pair(self.config.patch_size)
        side = math.isqrt(num_positions)
        height, width = image_size
        if side * side != num_positions or height % side or width % side:
            raise ValueError(
                f"MIM with a convolutional tower masks the image area of each feature-map cell: it needs a square "
                f"map whose side divides the image, got num_vision_positions={num_positions} for "
                f"{height}x{width} images. Set mim_loss_weight=0."
            )
        return height // side, width // side

    def to_tokens(self, last_hidden_state: "torch.Tensor") -> "torch.Tensor":
        """The tower's final output as (batch, tokens, width): a feature map's H*W cells in raster order (row by row,
        the order of a ViT's patches); a token sequence unchanged."""
        if last_hidden_state.dim() == 4:
            return last_hidden_state.flatten(2).transpose(1, 2)
        return last_hidden_state

    def max_text_length(self) -> int | None:
        """Longest text, in tokens, the text tower's own position embeddings accept (None when unbounded)."""
        n = getattr(self.config, "max_position_embeddings", None)
        if n is None:
            return None
        if self.type.position_offset:
            n -= (getattr(self.config, "pad_token_id", None) or 0) + 1
        return n

    def build(self) -> PreTrainedModel:
        """The tower, randomly initialised from its config. Pooling layers are left out where the model allows it:
        BRIDGE pools on its own, and parameters that never get a gradient break DDP and gradient checks."""
        try:
            return AutoModel.from_config(self.config, add_pooling_layer=False)
        except TypeError:
            return AutoModel.from_config(self.config)

    def from_pretrained(self, name_or_path, **kwargs) -> PreTrainedModel:
        """The pretrained tower at `name_or_path` (`AutoModel.from_pretrained` with this config), without its pooling
        layer where the model allows it, as `build` does."""
        try:
            return AutoModel.from_pretrained(name_or_path, config=self.config, add_pooling_layer=False, **kwargs)
        except TypeError:
            return AutoModel.from_pretrained(name_or_path, config=self.config, **kwargs)

    def _no_grid_message(self) -> str:
        model_type = getattr(self.config, "model_type", "?")
        if self.convolutional:
            return (
                f"a convolutional vision tower ({model_type!r}) emits one token per cell of its last feature map, "
                "which depends on the image size; set `num_vision_positions` in BridgeConfig to that map's height x "
                "width (e.g. 16 for a 4 x 4 map)."
            )
        return (
            f"cannot infer the vision tower's patch grid from a {model_type!r} config (no image_size/patch_size); "
            "set `num_vision_positions` in BridgeConfig explicitly."
        )


__all__ = ["ATTENTION_PROJECTIONS", "TOWER_TYPES", "TowerGeometry", "TowerType"]
