"""BRIDGE: cross-only, bidirectional interaction layers on top of a pretrained vision tower and text tower.

Hub code: imports only the standard library, torch, transformers and `.configuration_bridge`, so that it can be saved
next to the weights and loaded with ``trust_remote_code=True`` where this package is not installed.
"""

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput

from .configuration_bridge import SCORE_MODES, BridgeConfig

# `save_pretrained` writes these so that the three Auto classes (and thus the zero-shot pipeline) resolve to the
# Hub code files saved next to the weights.
BRIDGE_AUTO_MAP = {
    "AutoConfig": "configuration_bridge.BridgeConfig",
    "AutoModel": "modeling_bridge.BridgeModel",
    "AutoModelForZeroShotImageClassification": "modeling_bridge.BridgeModel",
}


# --------------------------------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class BridgeInteractionOutput(ModelOutput):
    r"""
    Result of running the interaction stack on aligned (image, text) pairs: pair b is image b with text b.

    vision_last_hidden_state (`torch.FloatTensor` of shape `(batch, Nv, dv)`): vision states after the last layer.
    text_last_hidden_state (`torch.FloatTensor` of shape `(batch, Nt, dt)`): text states after the last layer.
    cross_image_embeds (`torch.FloatTensor` of shape `(batch, projection_dim)`): normalised fused image embeddings.
    cross_text_embeds (`torch.FloatTensor` of shape `(batch, projection_dim)`): normalised fused text embeddings.
    vision_hidden_states / text_hidden_states (`tuple(torch.FloatTensor)`): the stack's input and every layer's
        output (L + 1 tensors), when `output_hidden_states=True`.
    text_attentions (`tuple(torch.FloatTensor)` of shape `(batch, heads, Nt, Nv)`): text-queries-vision attention
        probabilities per layer, when `output_attentions=True`.
    vision_attentions (`tuple(torch.FloatTensor)` of shape `(batch, heads, Nv, Nt)`): vision-queries-text attention
        probabilities per layer, when `output_attentions=True`.
    """

    vision_last_hidden_state: torch.FloatTensor | None = None
    text_last_hidden_state: torch.FloatTensor | None = None
    cross_image_embeds: torch.FloatTensor | None = None
    cross_text_embeds: torch.FloatTensor | None = None
    vision_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    text_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    text_attentions: tuple[torch.FloatTensor, ...] | None = None
    vision_attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class BridgeOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor`, *optional*, returned when `return_loss=True`): symmetric contrastive loss of the
        scores, with image i matched to text i.
    logits_per_image (`torch.FloatTensor` of shape `(n_images, n_texts)`): score of every (image, text) pair in the
        requested mode; entry (i, j) depends on image i and text j only.
    logits_per_text (`torch.FloatTensor` of shape `(n_texts, n_images)`): the transpose.
    itm_logits (`torch.FloatTensor` of shape `(n_images, n_texts, 2)`): ITM head `[no-match, match]` logits of every
        pair, when the interaction stack ran (`score` "fused" or "itm").
    image_embeds (`torch.FloatTensor` of shape `(n_images, projection_dim)`): normalised unimodal image embeddings.
    text_embeds (`torch.FloatTensor` of shape `(n_texts, projection_dim)`): normalised unimodal text embeddings.
    cross_image_embeds / cross_text_embeds (`torch.FloatTensor` of shape `(n_images, n_texts, projection_dim)`):
        fused embeddings of every pair, when the stack ran and `output_hidden_states=True`.
    vision_model_output / text_model_output (`BaseModelOutputWithPooling`): the towers' outputs.
    interaction_vision_hidden_states / interaction_text_hidden_states (`tuple(torch.FloatTensor)`): the stack's input
        and every layer's output, each of shape `(n_images, n_texts, N, d)`, when the stack ran and
        `output_hidden_states=True`.
    interaction_text_attentions / interaction_vision_attentions (`tuple(torch.FloatTensor)`): per layer,
        `(n_images, n_texts, heads, Nt, Nv)` and `(n_images, n_texts, heads, Nv, Nt)`, when the stack ran and
        `output_attentions=True`.
    gate_values (`torch.FloatTensor` of shape `(num_interaction_layers, 2)`): sigmoid gates `[text, vision]`.
    temperatures (`torch.FloatTensor` of shape `(num_interaction_layers, 2)`): attention temperatures
        `[text<-vision, vision<-text]`.
    """

    loss: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    itm_logits: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    cross_image_embeds: torch.FloatTensor | None = None
    cross_text_embeds: torch.FloatTensor | None = None
    vision_model_output: BaseModelOutputWithPooling | None = None
    text_model_output: BaseModelOutputWithPooling | None = None
    interaction_vision_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    interaction_text_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    interaction_text_attentions: tuple[torch.FloatTensor, ...] | None = None
    interaction_vision_attentions: tuple[torch.FloatTensor, ...] | None = None
    gate_values: torch.FloatTensor | None = None
    temperatures: torch.FloatTensor | None = None

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(
            self[k].to_tuple() if k in ("vision_model_output", "text_model_output") else self[k] for k in self.keys()
        )


# --------------------------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------------------------


class BridgeScalar(nn.Module):
    """One learned scalar. A module (not a bare parameter) so that PEFT's `modules_to_save` can wrap it."""

    def __init__(self, init_value: float):
        super().__init__()
        self.init_value = float(init_value)
        self.value = nn.Parameter(torch.tensor(self.init_value))

    def forward(self) -> torch.Tensor:
        return self.value


class BridgeModalityStates(NamedTuple):
    """A stream projected into the shared space for one layer: what it contributes as queries, keys and values.

    None of it depends on the partner modality, so in pairwise scoring layer 1 computes it once per image / text.
    """

    shared: torch.Tensor  # Z, (B, N, ds)
    query: torch.Tensor  # L2-normalised queries, (B, heads, N, head_dim)
    key: torch.Tensor  # L2-normalised keys for the partner's queries, (B, heads, N, head_dim)
    value: torch.Tensor  # values for the partner's queries, (B, heads, N, head_dim)

    def select(self, index: torch.Tensor) -> "BridgeModalityStates":
        return BridgeModalityStates(*(t.index_select(0, index) for t in self))


def _softplus_inverse(x: float) -> float:
    return x + math.log(-math.expm1(-x))


class BridgeCrossAttention(nn.Module):
    """Cross-only multi-head attention of one direction (queries from one stream, keys/values from the other).

    Scores are cosine similarities divided by a learned temperature (no 1/sqrt(d)), plus a learned positional bias
    shared across heads, plus the key padding mask.
    """

    def __init__(self, config: BridgeConfig, num_query_positions: int, num_key_positions: int):
        super().__init__()
        self.num_heads = config.num_interaction_heads
        self.head_dim = config.shared_dim // config.num_interaction_heads
        self.attention_dropout = config.attention_dropout
        self.q_proj = nn.Linear(config.shared_dim, config.shared_dim)
        self.k_proj = nn.Linear(config.shared_dim, config.shared_dim)
        self.v_proj = nn.Linear(config.shared_dim, config.shared_dim)
        self.o_proj = nn.Linear(config.shared_dim, config.shared_dim)
        self.output_dropout = nn.Dropout(config.interaction_dropout)
        # tau = softplus(theta) stays positive; theta starts where tau = init_temperature.
        self.temperature = BridgeScalar(_softplus_inverse(config.init_temperature))
        self.position_bias = (
            nn.Parameter(torch.zeros(num_query_positions, num_key_positions)) if config.use_positional_bias else None
        )

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def get_temperature(self) -> torch.Tensor:
        return F.softplus(self.temperature())

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_bias: torch.Tensor | None = None,
        use_eager: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """query (B, h, Lq, dh) and key (B, h, Lk, dh) are already L2-normalised; key_padding_bias is (B, 1, 1, Lk)."""
        num_queries, num_keys = query.shape[-2], key.shape[-2]
        query = query / self.get_temperature().to(query.dtype)
        bias = key_padding_bias
        if self.position_bias is not None:
            position_bias = self.position_bias[:num_queries, :num_keys].to(query.dtype)
            bias = position_bias if bias is None else bias + position_bias
        dropout = self.attention_dropout if self.training else 0.0
        if use_eager:
            scores = query @ key.transpose(-1, -2)
            if bias is not None:
                scores = scores + bias
            probs = scores.softmax(dim=-1, dtype=torch.float32).to(query.dtype)
            attended = F.dropout(probs, p=dropout, training=self.training) @ value
        else:
            probs = None
            attended = F.scaled_dot_product_attention(query, key, value, attn_mask=bias, dropout_p=dropout, scale=1.0)
        attended = attended.transpose(1, 2).flatten(2)
        return self.output_dropout(self.o_proj(attended)), probs


class BridgeInteractionLayer(GradientCheckpointingLayer):
    """Interaction layer: pre-norm, project both streams to the shared space, cross-attend both ways, and add the
    results back to each stream through a sigmoid gate."""

    def __init__(self, config: BridgeConfig):
        super().__init__()
        dv, dt, ds = config.vision_config.hidden_size, config.text_config.hidden_size, config.shared_dim
        nv, nt = config.num_vision_positions, config.max_text_positions
        self.vision_norm = nn.LayerNorm(dv)
        self.text_norm = nn.LayerNorm(dt)
        self.vision_to_shared = nn.Linear(dv, ds)
        self.text_to_shared = nn.Linear(dt, ds)
        self.text_attention = BridgeCrossAttention(config, nt, nv)  # text queries, vision keys/values
        self.vision_attention = BridgeCrossAttention(config, nv, nt)  # vision queries, text keys/values
        self.shared_to_text = nn.Linear(ds, dt)
        self.shared_to_vision = nn.Linear(ds, dv)
        self.text_gate = BridgeScalar(config.init_gate_bias)
        self.vision_gate = BridgeScalar(config.init_gate_bias)

    def project_vision(self, vision_hidden_state: torch.Tensor) -> torch.Tensor:
        return self.vision_to_shared(self.vision_norm(vision_hidden_state))

    def project_text(self, text_hidden_state: torch.Tensor) -> torch.Tensor:
        return self.text_to_shared(self.text_norm(text_hidden_state))

    @staticmethod
    def _modality_states(shared, own: BridgeCrossAttention, partner: BridgeCrossAttention) -> BridgeModalityStates:
        """`own` is the attention in which this stream queries, `partner` the one it serves keys and values to."""
        return BridgeModalityStates(
            shared,
            F.normalize(own.split_heads(own.q_proj(shared)), dim=-1, eps=1e-8),
            F.normalize(partner.split_heads(partner.k_proj(shared)), dim=-1, eps=1e-8),
            partner.split_heads(partner.v_proj(shared)),
        )

    def prepare_vision(self, vision_hidden_state: torch.Tensor) -> BridgeModalityStates:
        return self._modality_states(
            self.project_vision(vision_hidden_state), self.vision_attention, self.text_attention
        )

    def prepare_text(self, text_hidden_state: torch.Tensor) -> BridgeModalityStates:
        return self._modality_states(self.project_text(text_hidden_state), self.text_attention, self.vision_attention)

    def gates(self) -> torch.Tensor:
        return torch.stack([torch.sigmoid(self.text_gate()), torch.sigmoid(self.vision_gate())])

    def temperatures(self) -> torch.Tensor:
        return torch.stack([self.text_attention.get_temperature(), self.vision_attention.get_temperature()])

    def forward(
        self,
        vision_hidden_state: torch.Tensor,
        text_hidden_state: torch.Tensor,
        text_padding_bias: torch.Tensor | None = None,
        vision_states: BridgeModalityStates | None = None,
        text_states: BridgeModalityStates | None = None,
        use_eager: bool = False,
    ):
        """Returns (vision_hidden_state, text_hidden_state, vision_states, text_states, text_probs, vision_probs).

        `vision_states`/`text_states` may be passed precomputed (they only depend on this layer's own inputs);
        `text_padding_bias` (B, 1, 1, Nt) keeps padded text tokens from being attended to.
        """
        if vision_states is None:
            vision_states = self.prepare_vision(vision_hidden_state)
        if text_states is None:
            text_states = self.prepare_text(text_hidden_state)
        text_update, text_probs = self.text_attention(
            text_states.query, vision_states.key, vision_states.value, None, use_eager
        )
        vision_update, vision_probs = self.vision_attention(
            vision_states.query, text_states.key, text_states.value, text_padding_bias, use_eager
        )
        text_hidden_state = text_hidden_state + torch.sigmoid(self.text_gate()) * self.shared_to_text(text_update)
        vision_hidden_state = vision_hidden_state + torch.sigmoid(self.vision_gate()) * self.shared_to_vision(
            vision_update
        )
        return vision_hidden_state, text_hidden_state, vision_states, text_states, text_probs, vision_probs


class BridgeITMHead(nn.Module):
    """Image-text matching on `[c_t ; c_v ; <c_t, c_v>]`, returning `[no-match, match]` logits."""

    def __init__(self, config: BridgeConfig):
        super().__init__()
        p = config.projection_dim
        self.dense = nn.Linear(2 * p + 1, p)
        self.activation = nn.ReLU()
        self.dropout = nn.Dropout(config.itm_dropout)
        self.classifier = nn.Linear(p, 2)

    def forward(self, cross_image_embeds: torch.Tensor, cross_text_embeds: torch.Tensor) -> torch.Tensor:
        dot = (cross_image_embeds * cross_text_embeds).sum(-1, keepdim=True)
        features = torch.cat([cross_text_embeds, cross_image_embeds, dot], dim=-1)
        return self.classifier(self.dropout(self.activation(self.dense(features))))


class BridgePredictionHead(nn.Module):
    """Linear -> LayerNorm -> GELU -> Linear: the MLM head (to the vocabulary) and the MIM head (to vision features)."""

    def __init__(self, hidden_size: int, output_size: int):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.layer_norm = nn.LayerNorm(hidden_size)
        self.activation = nn.GELU()
        self.decoder = nn.Linear(hidden_size, output_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.activation(self.layer_norm(self.dense(hidden_states))))


def pool_tokens(hidden_states: torch.Tensor, pooling: str, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Pool (B, N, d) -> (B, d); `mask` (B, N) marks real tokens (1) and padding (0)."""
    if pooling == "cls":
        return hidden_states[:, 0]
    if mask is None:
        return hidden_states.mean(1) if pooling == "mean" else hidden_states.amax(1)
    mask = mask.unsqueeze(-1).to(hidden_states.dtype)
    if pooling == "mean":
        return (hidden_states * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    return hidden_states.masked_fill(mask == 0, torch.finfo(hidden_states.dtype).min).amax(1)


def contrastive_loss(logits: torch.Tensor) -> torch.Tensor:
    """Symmetric cross-entropy of a square (images x texts) score matrix whose diagonal holds the matches."""
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


# --------------------------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------------------------


class BridgePreTrainedModel(PreTrainedModel):
    config_class = BridgeConfig
    config: BridgeConfig
    base_model_prefix = "bridge"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["BridgeInteractionLayer"]
    _supports_sdpa = True
    _supports_attention_backend = False

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, BridgeScalar):
            init.constant_(module.value, module.init_value)
        elif isinstance(module, BridgeCrossAttention):
            if module.position_bias is not None:
                init.zeros_(module.position_bias)
        elif isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)

    def save_pretrained(self, save_directory, *args, **kwargs):
        # `register_for_auto_class` keeps one class only; the zero-shot pipeline needs all three mappings.
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **BRIDGE_AUTO_MAP}
        if type(self)._auto_class is None:
            type(self).register_for_auto_class("AutoModel")
        return super().save_pretrained(save_directory, *args, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """As `PreTrainedModel.from_pretrained`, but weights that miss or add interaction-layer (or other BRIDGE)
        parameters are an error naming them, not a silent random initialisation."""
        wants_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs)
        bridge = getattr(model, model.base_model_prefix, model)
        prefix = "" if bridge is model else f"{model.base_model_prefix}."
        core = tuple(f"{prefix}{name}." for name, _ in bridge.named_children())
        missing = sorted(k for k in info.get("missing_keys", ()) if k.startswith(core))
        unexpected = sorted(k for k in info.get("unexpected_keys", ()) if "interaction_layers." in k)
        if missing or unexpected:
            raise ValueError(
                f"The weights in {pretrained_model_name_or_path} do not match its BridgeConfig "
                f"(num_interaction_layers={model.config.num_interaction_layers}, shared_dim={model.config.shared_dim})."
                f" Missing keys: {missing or 'none'}. Unexpected keys: {unexpected or 'none'}. Fix config.json to "
                "describe the saved model, or re-save / re-convert the checkpoint."
            )
        return (model, info) if wants_info else model


class BridgeModel(BridgePreTrainedModel):
    """BRIDGE: vision tower + text tower + interaction layers, with unimodal and fused (pairwise) scoring."""

    def __init__(
        self,
        config: BridgeConfig | None = None,
        vision_model: PreTrainedModel | None = None,
        text_model: PreTrainedModel | None = None,
    ):
        r"""
        vision_model / text_model (`PreTrainedModel`, *optional*): ready towers (e.g. pretrained ones) to use instead
            of building them from `config`; their weights are kept as they are. With both given, `config` may be
            omitted and is built from theirs with default interaction settings.
        """
        if config is None:
            if vision_model is None or text_model is None:
                raise ValueError("BridgeModel needs a config, or both a vision_model and a text_model.")
            config = BridgeConfig.from_vision_text_configs(vision_model.config, text_model.config)
        super().__init__(config)
        self.vision_model = vision_model if vision_model is not None else _tower_from_config(config.vision_config)
        self.text_model = text_model if text_model is not None else _tower_from_config(config.text_config)
        # Keep one config object per tower, so that settings such as `attn_implementation` reach the towers.
        self.vision_model.config = config.vision_config
        self.text_model.config = config.text_config

        dv, dt, p = config.vision_config.hidden_size, config.text_config.hidden_size, config.projection_dim
        self.interaction_layers = nn.ModuleList(
            [BridgeInteractionLayer(config) for _ in range(config.num_interaction_layers)]
        )
        self.vision_unimodal_projection = nn.Linear(dv, p)
        self.text_unimodal_projection = nn.Linear(dt, p)
        self.vision_cross_projection = nn.Linear(config.shared_dim, p)
        self.text_cross_projection = nn.Linear(config.shared_dim, p)
        self.logit_scale = BridgeScalar(config.logit_scale_init_value)
        self.itc_alpha = BridgeScalar(config.itc_alpha_init_value)
        self.itm_head = BridgeITMHead(config)
        self.mlm_head = BridgePredictionHead(dt, config.text_config.vocab_size)
        self.mim_head = BridgePredictionHead(dv, dv)
        self.post_init()

    # ---------------------------------------------------------------- input checks (shapes only: no host sync)

    def _check_pixel_values(self, pixel_values: torch.Tensor):
        vc = self.config.vision_config
        channels = getattr(vc, "num_channels", 3)
        size = getattr(vc, "image_size", None)
        size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
        if pixel_values.dim() != 4 or pixel_values.shape[1] != channels:
            raise ValueError(
                f"pixel_values must have shape (batch, {channels}, height, width), got {tuple(pixel_values.shape)}. "
                "Prepare images with BridgeProcessor(images=...)."
            )
        if size[0] is not None and tuple(pixel_values.shape[-2:]) != size:
            raise ValueError(
                f"pixel_values are {tuple(pixel_values.shape[-2:])} pixels but the vision tower expects {size}; "
                "resize the images with BridgeProcessor / the model's image processor."
            )

    def _check_text(self, input_ids, attention_mask, token_type_ids):
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (batch, sequence_length), got {tuple(input_ids.shape)}.")
        if input_ids.shape[0] == 0:
            raise ValueError("No text given (input_ids has 0 rows): pass at least one text / candidate label.")
        for name, tensor in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
            if tensor is not None and tuple(tensor.shape) != tuple(input_ids.shape):
                raise ValueError(
                    f"{name} has shape {tuple(tensor.shape)} but input_ids has {tuple(input_ids.shape)}: their batch "
                    "sizes and lengths must agree; tokenize texts and masks together."
                )
        limit = self.config.max_text_positions
        if input_ids.shape[1] > limit:
            raise ValueError(
                f"Text of {input_ids.shape[1]} tokens exceeds the model's {limit} text positions (positional-bias "
                f"table and text tower); tokenize with truncation=True, max_length={limit}."
            )

    # ---------------------------------------------------------------- unimodal encoders

    def _unimodal_output(self, tower_outputs, projection: nn.Linear, mask=None) -> BaseModelOutputWithPooling:
        pooled = pool_tokens(tower_outputs.last_hidden_state, self.config.pooling, mask)
        return BaseModelOutputWithPooling(
            last_hidden_state=tower_outputs.last_hidden_state,
            pooler_output=F.normalize(projection(pooled), dim=-1),
            hidden_states=tower_outputs.get("hidden_states"),
            attentions=tower_outputs.get("attentions"),
        )

    def get_image_features(
        self, pixel_values: torch.Tensor, output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> BaseModelOutputWithPooling:
        """Vision tower states, with the normalised unimodal image embedding as `pooler_output`."""
        self._check_pixel_values(pixel_values)
        outputs = self.vision_model(
            pixel_values=pixel_values.to(self.vision_model.dtype),
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        return self._unimodal_output(outputs, self.vision_unimodal_projection)

    def get_text_features(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
        output_attentions: bool | None = None, output_hidden_states: bool | None = None,
    ) -> BaseModelOutputWithPooling:
        """Text tower states, with the normalised unimodal text embedding as `pooler_output`."""
        self._check_text(input_ids, attention_mask, token_type_ids)
        # Only what was given: not every text tower takes token_type_ids (DistilBERT does not).
        extra = {k: v for k, v in (("token_type_ids", token_type_ids), ("position_ids", position_ids)) if v is not None}
        outputs = self.text_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            **extra,
        )
        return self._unimodal_output(outputs, self.text_unimodal_projection, attention_mask)

    # ---------------------------------------------------------------- interaction

    def _use_eager_attention(self, output_attentions: bool) -> bool:
        return bool(output_attentions) or self.config._attn_implementation == "eager"

    def text_padding_bias(self, attention_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
        """(B, Nt) 1/0 mask -> (B, 1, 1, Nt) additive bias. A finite minimum keeps an all-padding row NaN-free."""
        if attention_mask is None:
            return None
        return ((1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min).to(dtype)

    def interact(
        self,
        vision_hidden_state: torch.Tensor,
        text_hidden_state: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        vision_states: BridgeModalityStates | None = None,
        text_states: BridgeModalityStates | None = None,
    ) -> BridgeInteractionOutput:
        """Run the interaction stack on aligned pairs (image b with text b) and pool the fused embeddings.

        `vision_states`/`text_states` are the first layer's precomputed projections, when the caller has them.
        """
        padding_bias = self.text_padding_bias(attention_mask, text_hidden_state.dtype)
        use_eager = self._use_eager_attention(output_attentions)
        # Per-layer states are kept only when asked for: holding them all would multiply the memory of each chunk.
        all_vision, all_text = [vision_hidden_state], [text_hidden_state]
        text_attentions, vision_attentions = [], []
        for layer in self.interaction_layers:
            vision_hidden_state, text_hidden_state, vision_states, text_states, text_probs, vision_probs = layer(
                vision_hidden_state, text_hidden_state, padding_bias, vision_states, text_states, use_eager
            )
            if output_hidden_states:
                all_vision.append(vision_hidden_state)
                all_text.append(text_hidden_state)
            if output_attentions:
                text_attentions.append(text_probs)
                vision_attentions.append(vision_probs)
            last_vision_shared, last_text_shared = vision_states.shared, text_states.shared
            vision_states = text_states = None
        if self.config.cross_embed_source == "output":
            last = self.interaction_layers[-1]
            last_vision_shared = last.project_vision(vision_hidden_state)
            last_text_shared = last.project_text(text_hidden_state)
        pooled_vision = pool_tokens(last_vision_shared, self.config.pooling)
        pooled_text = pool_tokens(last_text_shared, self.config.pooling, attention_mask)
        return BridgeInteractionOutput(
            vision_last_hidden_state=vision_hidden_state,
            text_last_hidden_state=text_hidden_state,
            cross_image_embeds=F.normalize(self.vision_cross_projection(pooled_vision), dim=-1),
            cross_text_embeds=F.normalize(self.text_cross_projection(pooled_text), dim=-1),
            vision_hidden_states=tuple(all_vision) if output_hidden_states else None,
            text_hidden_states=tuple(all_text) if output_hidden_states else None,
            text_attentions=tuple(text_attentions) if output_attentions else None,
            vision_attentions=tuple(vision_attentions) if output_attentions else None,
        )

    def fused_logits(self, cross_image_embeds: torch.Tensor, cross_text_embeds: torch.Tensor) -> torch.Tensor:
        """logit_scale * <c_v, c_t> for aligned fused embeddings."""
        return self.logit_scale().exp() * (cross_image_embeds * cross_text_embeds).sum(-1)

    def pairwise_interaction(
        self,
        vision_hidden_state: torch.Tensor,
        text_hidden_state: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> dict[str, Any]:
        """Interact every image (N) with every text (M), `pair_chunk_size` pairs at a time.

        Each pair runs through the stack on its own, so its scores depend on that image and that text only. Layer 1's
        projections depend on one modality only and are computed once per image and once per text.
        Returns fused logits (N, M) and ITM logits (N, M, 2), plus per-pair embeddings / states / attentions when
        requested, each shaped (N, M, ...).
        """
        n_images, n_texts = vision_hidden_state.shape[0], text_hidden_state.shape[0]
        first = self.interaction_layers[0]
        vision_states, text_states = first.prepare_vision(vision_hidden_state), first.prepare_text(text_hidden_state)
        pair_ids = torch.arange(n_images * n_texts, device=vision_hidden_state.device)
        chunks = []
        for chunk in pair_ids.split(self.config.pair_chunk_size):
            image_index, text_index = chunk // n_texts, chunk % n_texts
            out = self.interact(
                vision_hidden_state.index_select(0, image_index),
                text_hidden_state.index_select(0, text_index),
                None if attention_mask is None else attention_mask.index_select(0, text_index),
                output_attentions=output_attentions,
                output_hidden_states=output_hidden_states,
                vision_states=vision_states.select(image_index),
                text_states=text_states.select(text_index),
            )
            out["fused_logits"] = self.fused_logits(out.cross_image_embeds, out.cross_text_embeds)
            out["itm_logits"] = self.itm_head(out.cross_image_embeds, out.cross_text_embeds)
            chunks.append(out)

        def gather(key):
            first_value = chunks[0][key]
            if isinstance(first_value, tuple):
                return tuple(torch.cat(parts).unflatten(0, (n_images, n_texts)) for parts in zip(*(c[key] for c in chunks)))
            return torch.cat([c[key] for c in chunks]).unflatten(0, (n_images, n_texts))

        keys = ["fused_logits", "itm_logits"]
        if output_hidden_states:
            keys += ["cross_image_embeds", "cross_text_embeds", "vision_hidden_states", "text_hidden_states"]
        if output_attentions:
            keys += ["text_attentions", "vision_attentions"]
        return {key: gather(key) for key in keys}

    def interaction_statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Gates `[text, vision]` and temperatures `[text<-vision, vision<-text]`, each (num_layers, 2)."""
        gates = torch.stack([layer.gates() for layer in self.interaction_layers])
        temperatures = torch.stack([layer.temperatures() for layer in self.interaction_layers])
        return gates, temperatures

    # ---------------------------------------------------------------- forward

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        score: str | None = None,
        return_loss: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> BridgeOutput | tuple:
        r"""
        Scores every image against every text.

        score (`str`, *optional*): `"unimodal"` (bi-encoder), `"fused"` (the pair's interaction, cosine of the fused
            embeddings) or `"itm"` (the ITM head's match logit on the pair's interaction); defaults to
            `config.default_score`.
        return_loss (`bool`, *optional*): return the symmetric contrastive loss of the scores (needs as many images
            as texts, image i matching text i).
        """
        if pixel_values is None and input_ids is None:
            raise ValueError("Neither pixel_values nor input_ids given: pass images, texts, or both.")
        score = score if score is not None else self.config.default_score
        if score not in SCORE_MODES:
            raise ValueError(f"Unknown score={score!r}; use one of {SCORE_MODES}.")
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if return_loss and (pixel_values is None or input_ids is None or pixel_values.shape[0] != input_ids.shape[0]):
            raise ValueError(
                "return_loss=True needs as many images as texts (image i matching text i); got "
                f"{None if pixel_values is None else pixel_values.shape[0]} images and "
                f"{None if input_ids is None else input_ids.shape[0]} texts."
            )

        vision_outputs = text_outputs = None
        if pixel_values is not None:
            vision_outputs = self.get_image_features(pixel_values, output_attentions, output_hidden_states)
        if input_ids is not None:
            text_outputs = self.get_text_features(
                input_ids, attention_mask, token_type_ids, position_ids, output_attentions, output_hidden_states
            )
        image_embeds = None if vision_outputs is None else vision_outputs.pooler_output
        text_embeds = None if text_outputs is None else text_outputs.pooler_output
        logits_per_image = loss = None
        pairs = {}
        if vision_outputs is not None and text_outputs is not None:
            if score == "unimodal":
                logits_per_image = self.logit_scale().exp() * image_embeds @ text_embeds.t()
            else:
                pairs = self.pairwise_interaction(
                    vision_outputs.last_hidden_state,
                    text_outputs.last_hidden_state,
                    attention_mask,
                    output_attentions=output_attentions,
                    output_hidden_states=output_hidden_states,
                )
                logits_per_image = pairs["fused_logits"] if score == "fused" else pairs["itm_logits"][..., 1]
            if return_loss:
                loss = contrastive_loss(logits_per_image)
        gates, temperatures = self.interaction_statistics()
        # Built in one call: ModelOutput's tuple order is the order in which fields are first set.
        output = BridgeOutput(
            loss=loss,
            logits_per_image=logits_per_image,
            logits_per_text=None if logits_per_image is None else logits_per_image.t(),
            itm_logits=pairs.get("itm_logits"),
            image_embeds=image_embeds,
            text_embeds=text_embeds,
            cross_image_embeds=pairs.get("cross_image_embeds"),
            cross_text_embeds=pairs.get("cross_text_embeds"),
            vision_model_output=vision_outputs,
            text_model_output=text_outputs,
            interaction_vision_hidden_states=pairs.get("vision_hidden_states"),
            interaction_text_hidden_states=pairs.get("text_hidden_states"),
            interaction_text_attentions=pairs.get("text_attentions"),
            interaction_vision_attentions=pairs.get("vision_attentions"),
            gate_values=gates,
            temperatures=temperatures,
        )
        return output if return_dict else output.to_tuple()


def _tower_from_config(tower_config) -> PreTrainedModel:
    """Build a tower from its config. Pooling layers are left out where the model allows it: BRIDGE pools on its
    own, and parameters that never get a gradient break DDP and gradient checks."""
    try:
        return AutoModel.from_config(tower_config, add_pooling_layer=False)
    except TypeError:
        return AutoModel.from_config(tower_config)


__all__ = [
    "BridgeCrossAttention",
    "BridgeInteractionLayer",
    "BridgeInteractionOutput",
    "BridgeModel",
    "BridgeOutput",
    "BridgePreTrainedModel",
]
