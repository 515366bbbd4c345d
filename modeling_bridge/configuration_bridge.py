"""BRIDGE configuration.

Hub code: imports only the standard library, transformers, huggingface_hub (a transformers dependency) and its
sibling `.towers_bridge`, so that it can be saved next to the weights and loaded with ``trust_remote_code=True``
where this package is not installed.
"""

import math
import os
import types
import typing
from typing import Literal

from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .towers_bridge import TowerGeometry


PoolingType = Literal["mean", "cls", "max"]
# The scores (README "Scores"): "unimodal" from pooled tower states; the pair scores from a pair's interaction
# (`pair_score` in modeling_bridge.py reads them off an interaction output).
PairScoreMode = Literal["fused", "itm"]
ScoreMode = Literal["unimodal", PairScoreMode]
CrossEmbedSource = Literal["output", "layer_input"]
FusedObjective = Literal["pairwise", "aligned"]
NegativeMining = Literal["hardest", "semi_hard"]
POOLING_TYPES = typing.get_args(PoolingType)
PAIR_SCORE_MODES = typing.get_args(PairScoreMode)
SCORE_MODES = ("unimodal", *PAIR_SCORE_MODES)
CROSS_EMBED_SOURCES = typing.get_args(CrossEmbedSource)
FUSED_OBJECTIVES = typing.get_args(FusedObjective)
NEGATIVE_MINING = typing.get_args(NegativeMining)
# The one registry of pre-training loss names: config fields `<name>_loss_weight`, stage keys `<name>`, output
# fields and logged components `<name>_loss` (plus ITC's two parts, `LOSS_COMPONENTS`).
LOSS_NAMES = ("itc", "itm", "mlm", "mim", "cycle")
LOSS_WEIGHT_FIELDS = tuple(f"{name}_loss_weight" for name in LOSS_NAMES)
LOSS_COMPONENTS = (*(f"{name}_loss" for name in LOSS_NAMES), "unimodal_itc_loss", "cross_itc_loss")


def is_local_only_path(name) -> bool:
    """Whether `name` can only mean a local path: a path object, or a string that is no valid Hub repo id
    (huggingface_hub's own check: "name" or "namespace/name"; so "./x", "/x", "~/x", "a/b/c", "a b" are paths)."""
    if isinstance(name, os.PathLike):
        return True
    try:
        validate_repo_id(name)
    except HFValidationError:
        return True
    return False


def check_local_path(name, what: str) -> None:
    """FileNotFoundError naming `name` when it can only be a local path and does not exist (transformers would
    report a malformed Hub repo id instead)."""
    if is_local_only_path(name) and not os.path.exists(os.path.expanduser(os.fspath(name))):
        raise FileNotFoundError(
            f"The {what} {os.fspath(name)!r} does not exist (a local path, not a Hub repo id); check the path."
        )


def text_tower_max_length(text_config) -> int | None:
    """Longest text, in tokens, that the text tower's own position embeddings accept (None when unbounded)."""
    return TowerGeometry(text_config).max_text_length()


def is_convolutional_tower(tower_config) -> bool:
    """A tower that returns a (batch, channels, height, width) feature map (ResNet, ConvNeXt, EfficientNet, ...):
    BRIDGE reads the last map as height x width tokens (`towers_bridge.TOWER_TYPES`)."""
    return TowerGeometry(tower_config).convolutional


def tower_hidden_size(tower_config) -> int | None:
    """Width of the tokens a tower emits (`towers_bridge.TowerGeometry.hidden_size`)."""
    return TowerGeometry(tower_config).hidden_size


def infer_num_vision_positions(vision_config) -> int:
    """Number of tokens the vision tower emits for an image of its configured size (patches, CLS, registers)."""
    try:
        return TowerGeometry(vision_config).num_positions()
    except ValueError as error:
        raise ValueError(f"num_vision_positions: {error}") from None


class BridgeConfig(PreTrainedConfig):
    r"""
    Configuration of a BRIDGE model: a vision tower and a text tower (any transformers model types, given as config
    objects or dicts carrying `model_type`) joined by `num_interaction_layers` cross-only, bidirectional attention
    layers.

    Args:
        vision_config (`dict` or `PreTrainedConfig`): config of the vision tower (default: ViT). Transformer towers
            (ViT, CLIP, SigLIP, DINOv2, ...) give their tokens; convolutional ones (ResNet, ConvNeXt, ...) their last
            feature map, read as height x width tokens of its channel width (as open_clip's ResNet towers).
        text_config (`dict` or `PreTrainedConfig`): config of the text tower (default: BERT).
        num_interaction_layers (`int`, defaults to 6): number of interaction layers L.
        shared_dim (`int`, defaults to 768): width `ds` of the shared space the two streams attend in.
        num_interaction_heads (`int`, defaults to 12): heads of each cross-attention; must divide `shared_dim`.
        interaction_dropout (`float`, defaults to 0.1): dropout on the attention outputs.
        attention_dropout (`float`, defaults to 0.1): dropout on the attention probabilities.
        use_positional_bias (`bool`, defaults to True): learned (text position x vision position) bias, shared
            across heads.
        max_text_positions (`int`, *optional*): rows of the positional-bias table, i.e. the longest text the model
            accepts. Defaults to the text tower's limit (at most 512).
        num_vision_positions (`int`, *optional*): tokens per image (patches + CLS + registers); inferred from the
            vision config when not given, except for convolutional towers (the feature map's height x width).
        init_temperature (`float`, defaults to 0.1): initial attention temperature tau = softplus(theta). Scores are
            cosines in [-1, 1], so tau = 1 (the original's init; converted checkpoints keep theirs) gives almost
            uniform attention that training barely moves; 0.1 spreads the logits over [-10, 10].
        init_gate_bias (`float`, defaults to -2.2): initial gate logit, sigmoid(-2.2) ~ 0.1.
        pooling (`str`, defaults to `"mean"`): `"mean"`, `"cls"` or `"max"`; text pooling is always masked.
        projection_dim (`int`, defaults to 256): size of the unimodal and cross embeddings.
        logit_scale_init_value (`float`, defaults to 2.6592): initial log of the contrastive logit scale (1/0.07).
        itc_alpha_init_value (`float`, defaults to 0.5): initial logit alpha; sigmoid(alpha) weights the cross ITC
            against the unimodal ITC (the original's initialisation).
        itm_dropout (`float`, defaults to 0.1): dropout inside the ITM head.
        default_score (`str`, defaults to `"fused"`): scoring mode of `forward` when `score=None`:
            `"unimodal"`, `"fused"` or `"itm"`.
        pair_chunk_size (`int`, defaults to 256): image-text pairs sent through the interaction stack at once.
        cross_embed_source (`str`, defaults to `"output"`): where the cross embeddings are pooled from:
            `"output"` (the final states, projected by the last layer's norm and projection) or `"layer_input"`
            (the last layer's input projection, as the original code does).
        initializer_range (`float`, defaults to 0.02): std of the normal init of new linear layers.
        fused_objective (`str`, defaults to `"pairwise"`): how `BridgeForPreTraining` trains the fused score and ITM.
            `"pairwise"`: mine `num_hard_negatives` negatives per anchor from the unimodal similarities, run the
            interaction on those real (image, text) pairs, and apply ITM and a listwise softmax over the positive and
            its negatives. `"aligned"`: the original's, contrasting the fused embeddings of aligned pairs only.
        num_hard_negatives (`int`, defaults to 3): negatives mined per anchor (per image and per text in
            `"pairwise"`, per text in `"aligned"`).
        num_hardest_negatives (`int`, defaults to 0): of the `num_hard_negatives`, how many are always the most
            similar candidates (e.g. the attribute-swapped twin, which the semi-hard band excludes by construction:
            it is the *most* similar caption); the rest follow `negative_mining`. Must be <= num_hard_negatives.
        negative_mining (`str`, defaults to `"semi_hard"`): how negatives are picked from the unimodal cosine
            similarities (an identical caption never counts). `"semi_hard"`: the paper's, candidates in the band
            `S_ii - itm_margin_max < S_ij < S_ii - itm_margin_min` first (random order), the hardest others filling
            up. `"hardest"`: the most similar candidates, e.g. an image that differs from the positive only in which
            colour goes with which shape; early in training these can be too hard to learn from (BENCHMARKS.md).
        itm_margin_min / itm_margin_max (`float`, defaults to 0.2 / 0.5): the semi-hard band.
        num_images (`int`, defaults to 2): images per statement of `BridgeForVisualReasoning` (NLVR2: left, right).
        itc_loss_weight, itm_loss_weight, mlm_loss_weight, mim_loss_weight, cycle_loss_weight (`float`): weights of
            the pre-training loss components (0 disables one); defaults 1, 1, 0, 0, 0 (stage A of the recipe).
    """

    model_type = "bridge"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="vit"),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="bert"),
    }

    vision_config: PreTrainedConfig | dict | None = None
    text_config: PreTrainedConfig | dict | None = None
    num_interaction_layers: int = 6
    shared_dim: int = 768
    num_interaction_heads: int = 12
    interaction_dropout: float = 0.1
    attention_dropout: float = 0.1
    use_positional_bias: bool = True
    max_text_positions: int | None = None
    num_vision_positions: int | None = None
    init_temperature: float = 0.1
    init_gate_bias: float = -2.2
    pooling: PoolingType = "mean"
    projection_dim: int = 256
    logit_scale_init_value: float = 2.6592
    itc_alpha_init_value: float = 0.5
    itm_dropout: float = 0.1
    default_score: ScoreMode = "fused"
    pair_chunk_size: int = 256
    cross_embed_source: CrossEmbedSource = "output"
    initializer_range: float = 0.02
    fused_objective: FusedObjective = "pairwise"
    num_hard_negatives: int = 3
    num_hardest_negatives: int = 0
    negative_mining: NegativeMining = "semi_hard"
    itm_margin_min: float = 0.2
    itm_margin_max: float = 0.5
    itc_loss_weight: float = 1.0
    itm_loss_weight: float = 1.0
    mlm_loss_weight: float = 0.0
    mim_loss_weight: float = 0.0
    cycle_loss_weight: float = 0.0
    num_images: int = 2

    def __post_init__(self, **kwargs):
        for name in ("vision_config", "text_config"):
            tower = getattr(self, name)
            if isinstance(tower, dict) and "model_type" not in tower:
                # Without it transformers would silently build the default tower type (ViT / BERT).
                raise ValueError(
                    f"BridgeConfig.{name} is a dict without 'model_type' (keys: {sorted(tower)}); add the tower's "
                    'model type, e.g. {"model_type": "vit", ...}, or pass a config object such as ViTConfig(...).'
                )
            if tower is not None and not isinstance(tower, (dict, PreTrainedConfig)):
                raise ValueError(
                    f"BridgeConfig.{name} must be a dict or a PreTrainedConfig, got {type(tower).__name__}."
                )
        super().__post_init__(**kwargs)
        tower_limit = text_tower_max_length(self.text_config)
        if self.max_text_positions is None:
            self.max_text_positions = min(tower_limit or 512, 512)
        if self.num_vision_positions is None:
            self.num_vision_positions = infer_num_vision_positions(self.vision_config)
        self._validate_field_types()
        self._validate_bridge_fields(tower_limit)

    def _validate_field_types(self):
        """Type-check every field BridgeConfig declares against its annotation (JSON and kwargs alike): a wrong type
        would otherwise surface as a raw TypeError deep inside the model, or not at all (a string "no" is truthy)."""
        for field, expected in BridgeConfig.__annotations__.items():  # real types: no postponed annotations here
            if field in ("vision_config", "text_config"):
                continue
            value = getattr(self, field)
            allowed = (
                typing.get_args(expected)
                if typing.get_origin(expected) in (typing.Union, types.UnionType)
                else (expected,)
            )
            if value is None and type(None) in allowed:
                continue
            if typing.get_origin(expected) is Literal:
                ok, wanted = value in typing.get_args(expected), f"one of {typing.get_args(expected)}"
            elif float in allowed:  # ints are fine where floats are expected (JSON writes 1.0 as 1)
                ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                wanted = "a finite number"
            elif int in allowed:
                ok, wanted = isinstance(value, int) and not isinstance(value, bool), "an integer"
            elif bool in allowed:
                ok, wanted = isinstance(value, bool), "true or false"
            else:
                ok, wanted = isinstance(value, allowed), " or ".join(t.__name__ for t in allowed)
            if not ok:
                raise ValueError(f"BridgeConfig.{field}={value!r}: must be {wanted}.")

    def _validate_bridge_fields(self, tower_limit):
        def check(ok, field, message):
            if not ok:
                raise ValueError(f"BridgeConfig.{field}={getattr(self, field)!r}: {message}")

        for field in (
            "num_interaction_layers",
            "shared_dim",
            "num_interaction_heads",
            "projection_dim",
            "pair_chunk_size",
            "max_text_positions",
            "num_vision_positions",
            "num_hard_negatives",
            "num_images",
        ):
            check(getattr(self, field) >= 1, field, "must be a positive integer")
        check(
            self.shared_dim % self.num_interaction_heads == 0,
            "shared_dim",
            f"must be divisible by num_interaction_heads={self.num_interaction_heads}",
        )
        for field in ("interaction_dropout", "attention_dropout", "itm_dropout"):
            check(0.0 <= getattr(self, field) < 1.0, field, "must be a probability in [0, 1)")
        check(
            0 <= self.num_hardest_negatives <= self.num_hard_negatives,
            "num_hardest_negatives",
            f"must be between 0 and num_hard_negatives={self.num_hard_negatives}",
        )
        check(self.init_temperature > 0, "init_temperature", "must be > 0 (tau = softplus(theta) is positive)")
        check(self.initializer_range >= 0, "initializer_range", "must be >= 0")
        check(
            0.0 <= self.itm_margin_min <= self.itm_margin_max,
            "itm_margin_min",
            f"must satisfy 0 <= itm_margin_min <= itm_margin_max (={self.itm_margin_max})",
        )
        for field in LOSS_WEIGHT_FIELDS:
            check(getattr(self, field) >= 0, field, "must be >= 0 (0 disables the component)")
        check(
            tower_limit is None or self.max_text_positions <= tower_limit,
            "max_text_positions",
            f"exceeds the {tower_limit} positions of the text tower ({self.text_config.model_type}); "
            f"use at most {tower_limit}",
        )
        for name in ("vision_config", "text_config"):
            tower = getattr(self, name)
            if tower_hidden_size(tower) is None or (name == "text_config" and is_convolutional_tower(tower)):
                raise ValueError(
                    f"BridgeConfig.{name}: a {tower.model_type!r} config has no `hidden_size`"
                    f"{' (nor `hidden_sizes`)' if name == 'vision_config' else ''}; "
                    "pass the config of an encoder tower (e.g. the vision part of CLIP)."
                )

    @classmethod
    def from_vision_text_configs(cls, vision_config: PreTrainedConfig, text_config: PreTrainedConfig, **kwargs):
        """Build a BridgeConfig from the configs of a vision tower and a text tower, plus interaction fields."""
        return cls(vision_config=vision_config.to_dict(), text_config=text_config.to_dict(), **kwargs)


__all__ = ["BridgeConfig", "is_convolutional_tower", "tower_hidden_size"]
