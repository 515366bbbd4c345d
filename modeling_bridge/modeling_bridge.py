"""BRIDGE: cross-only, bidirectional interaction layers on top of a pretrained vision tower and text tower.

The model classes only; each other concern has one home beside it: the tower geometry (`towers_bridge.py`), the
pre-training objective (`loss_bridge.py`), input checks (`checks_bridge.py`), outputs (`outputs_bridge.py`), checked
loading (`loading_bridge.py`). Hub code: imports only the standard library, torch, transformers and these siblings
(and `.configuration_bridge`, `.pipelines`), so that it can be saved next to the weights and loaded with
``trust_remote_code=True`` where this package is not installed (the optional search helpers import the package
inside a try block).
"""

import json
import math
import threading
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import can_return_tuple, logging

from .checks_bridge import BridgeInputChecks, binary_label_loss, check_aligned, checked_answer_scores
from .configuration_bridge import PAIR_SCORE_MODES, SCORE_MODES, BridgeConfig
from .loading_bridge import load_checked, load_pretrained_tower
from .loss_bridge import BridgePreTrainingLoss, contrastive_loss, distributed_rank_and_world, gather_across_ranks
from .outputs_bridge import (
    BridgeForImageTextRetrievalOutput,
    BridgeForPreTrainingOutput,
    BridgeForQuestionAnsweringOutput,
    BridgeForVisualReasoningOutput,
    BridgeInteractionOutput,
    BridgeOutput,
)
from .towers_bridge import TowerGeometry


logger = logging.get_logger(__name__)

# --------------------------------------------------------------------------------------------------------------------
# The score rule
# --------------------------------------------------------------------------------------------------------------------


def pair_score(interaction: BridgeInteractionOutput, mode: str) -> torch.Tensor:
    """The scoring rule's pair scores, read off an interaction output (any shape of pairs): `"fused"`, the fused
    logit `logit_scale * <c_v, c_t>`; `"itm"`, the ITM head's match logit (index 1 of `[no-match, match]`)."""
    if mode == "fused":
        return interaction["fused_logits"]
    if mode == "itm":
        return interaction["itm_logits"][..., 1]
    raise ValueError(f"A pair score is one of {PAIR_SCORE_MODES}, got {mode!r}.")


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


class BridgeStreamProjection(NamedTuple):
    """One stream's part of an interaction layer's attention: its shared-space states `Z` and what it contributes as
    queries (to its own attention) and as keys and values (to the partner's). None of it depends on the partner, so
    the encoder computes layer 1's once per image / text and indexes it for every pair (the "layer-1 cache")."""

    shared: torch.Tensor  # Z, (B, N, ds)
    query: torch.Tensor  # L2-normalised queries, (B, heads, N, head_dim)
    key: torch.Tensor  # L2-normalised keys for the partner's queries, (B, heads, N, head_dim)
    value: torch.Tensor  # values for the partner's queries, (B, heads, N, head_dim)

    def select(self, index: torch.Tensor) -> "BridgeStreamProjection":
        return BridgeStreamProjection(*(t.index_select(0, index) for t in self))


def _softplus_inverse(x: float) -> float:
    return x + math.log(-math.expm1(-x))


def bridge_eager_attention_forward(module, query, key, value, attention_mask, scaling=1.0, dropout=0.0, **kwargs):
    """Eager attention of the attention interface's signature, returning the probabilities (for
    `output_attentions` and the cycle-consistency loss). Softmax statistics in at least float32."""
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = scores.softmax(dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32)).to(query.dtype)
    attended = torch.matmul(F.dropout(probs, p=dropout, training=module.training), value)
    return attended.transpose(1, 2).contiguous(), probs


class BridgeCrossAttention(nn.Module):
    """Cross-only multi-head attention of one direction (queries from one stream, keys/values from the other).

    Scores are cosine similarities divided by a learned temperature (hence `scaling=1.0`, no 1/sqrt(d)), plus a
    learned positional bias shared across heads, plus the key padding mask, as one additive mask. Dispatches through
    transformers' attention interface (`config._attn_implementation`: eager, sdpa, ...), eager when the
    probabilities are requested.
    """

    def __init__(self, config: BridgeConfig, num_query_positions: int, num_key_positions: int):
        super().__init__()
        self.config = config
        self.num_heads = config.num_interaction_heads
        self.head_dim = config.shared_dim // config.num_interaction_heads
        self.attention_dropout = config.attention_dropout
        self.is_causal = False
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

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def project_query(self, shared: torch.Tensor) -> torch.Tensor:
        """L2-normalised queries (B, heads, N, head_dim) of the querying stream's shared states."""
        return F.normalize(self._split_heads(self.q_proj(shared)), dim=-1, eps=1e-8)

    def project_key_value(self, shared: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """L2-normalised keys and values (B, heads, N, head_dim) of the attended stream's shared states."""
        return F.normalize(self._split_heads(self.k_proj(shared)), dim=-1, eps=1e-8), self._split_heads(
            self.v_proj(shared)
        )

    def get_temperature(self) -> torch.Tensor:
        return F.softplus(self.temperature())

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_bias: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """query / key / value from `project_query` / `project_key_value` (possibly the layer-1 cache);
        key_padding_bias (B, 1, 1, Lk). Returns the output (B, Lq, ds) and the probabilities (eager only)."""
        num_queries, num_keys = query.shape[-2], key.shape[-2]
        query = query / self.get_temperature().to(query.dtype)
        bias = key_padding_bias
        if self.position_bias is not None:
            position_bias = self.position_bias[:num_queries, :num_keys].to(query.dtype)
            if not torch.is_grad_enabled():
                # A slice of a parameter still requires grad under no_grad, and SDPA's CPU flash kernel refuses a
                # mask that does: without this, inference would fall back to the math kernel.
                position_bias = position_bias.detach()
            bias = position_bias if bias is None else bias + position_bias
        attention_interface = bridge_eager_attention_forward
        if not output_attentions:
            attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
                self.config._attn_implementation, bridge_eager_attention_forward
            )
        attended, probs = attention_interface(
            self,
            query,
            key,
            value,
            bias,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=1.0,
            is_causal=False,
        )
        return self.output_dropout(self.o_proj(attended.flatten(2))), probs


class BridgeInteractionLayer(GradientCheckpointingLayer):
    """Interaction layer: pre-norm, project both streams to the shared space, cross-attend both ways, and add the
    results back to each stream through a sigmoid gate."""

    def __init__(self, config: BridgeConfig):
        super().__init__()
        dv, dt, ds = TowerGeometry(config.vision_config).hidden_size, config.text_config.hidden_size, config.shared_dim
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

    def project_vision_stream(self, vision_hidden_state: torch.Tensor) -> BridgeStreamProjection:
        shared = self.project_vision(vision_hidden_state)
        return BridgeStreamProjection(
            shared, self.vision_attention.project_query(shared), *self.text_attention.project_key_value(shared)
        )

    def project_text_stream(self, text_hidden_state: torch.Tensor) -> BridgeStreamProjection:
        shared = self.project_text(text_hidden_state)
        return BridgeStreamProjection(
            shared, self.text_attention.project_query(shared), *self.vision_attention.project_key_value(shared)
        )

    def gates(self) -> torch.Tensor:
        return torch.stack([torch.sigmoid(self.text_gate()), torch.sigmoid(self.vision_gate())])

    def temperatures(self) -> torch.Tensor:
        return torch.stack([self.text_attention.get_temperature(), self.vision_attention.get_temperature()])

    def forward(
        self,
        vision_hidden_state: torch.Tensor,
        text_hidden_state: torch.Tensor,
        text_padding_bias: torch.Tensor | None = None,
        *cache: torch.Tensor,
        output_attentions: bool = False,
    ):
        """Returns (vision_hidden_state, text_hidden_state, vision_shared, text_shared, text_probs, vision_probs).

        `cache` optionally holds this layer's stream projections computed ahead (they depend on this layer's own
        inputs only): the four tensors of `project_vision_stream(...)`, then the four of `project_text_stream(...)`.
        Inputs and outputs are flat positional tensors because reentrant gradient checkpointing tracks only those.
        `text_padding_bias` (B, 1, 1, Nt) keeps padded text tokens from being attended to.
        """
        if cache:
            vision, text = BridgeStreamProjection(*cache[:4]), BridgeStreamProjection(*cache[4:])
        else:
            vision, text = self.project_vision_stream(vision_hidden_state), self.project_text_stream(text_hidden_state)
        text_update, text_probs = self.text_attention(text.query, vision.key, vision.value, None, output_attentions)
        vision_update, vision_probs = self.vision_attention(
            vision.query, text.key, text.value, text_padding_bias, output_attentions
        )
        text_hidden_state = text_hidden_state + torch.sigmoid(self.text_gate()) * self.shared_to_text(text_update)
        vision_hidden_state = vision_hidden_state + torch.sigmoid(self.vision_gate()) * self.shared_to_vision(
            vision_update
        )
        return vision_hidden_state, text_hidden_state, vision.shared, text.shared, text_probs, vision_probs


class BridgeInteractionEncoder(nn.ModuleList):
    """The interaction stack and its one primitive: run the layers on given (image index, text index) pairs of
    already-encoded images and texts, `pair_chunk_size` pairs at a time, with layer 1's stream projections computed
    once per image and once per text. N x M scoring passes the full index grid, pre-training its positives and mined
    negatives, re-ranking its top-k candidates. Each pair runs on its own, so its outputs depend on that image and
    that text only.

    A `ModuleList` of the layers (so checkpoints keep the names `interaction_layers.N.*`) that also owns the loop.
    """

    def __init__(self, config: BridgeConfig):
        super().__init__([BridgeInteractionLayer(config) for _ in range(config.num_interaction_layers)])
        self.config = config

    @staticmethod
    def text_padding_bias(attention_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
        """(B, Nt) 1/0 mask -> (B, 1, 1, Nt) additive bias. A finite minimum keeps an all-padding row NaN-free."""
        if attention_mask is None:
            return None
        return ((1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min).to(dtype)

    def forward(
        self,
        vision_hidden_state: torch.Tensor,
        text_hidden_state: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_index: torch.Tensor | None = None,
        text_index: torch.Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        output_last_hidden_state: bool = False,
        pair_chunk_size: int | None = None,
    ) -> "BridgeInteractionOutput":
        r"""
        vision_hidden_state (`(n_images, Nv, dv)`) / text_hidden_state (`(n_texts, Nt, dt)`): tower states.
        attention_mask (`(n_texts, Nt)`): the texts' padding mask.
        image_index / text_index (`(num_pairs,)`): pair p is image `image_index[p]` with text `text_index[p]`;
            both None: aligned pairs (image b with text b).
        output_last_hidden_state: also return the final states of every pair (MLM / MIM heads read them).
        pair_chunk_size: pairs per pass through the stack (default `config.pair_chunk_size`); memory stays bounded.

        Returns pooled shared-space states of each pair (`pooled_vision`, `pooled_text`, what the cross projections
        read; from `config.cross_embed_source`), plus per-pair states and attention maps on request.
        """
        if (image_index is None) != (text_index is None):
            raise ValueError("Give both image_index and text_index (the pairs), or neither (aligned pairs).")
        flags = (output_attentions, output_hidden_states, output_last_hidden_state)
        chunk = pair_chunk_size or self.config.pair_chunk_size
        if image_index is None:
            if vision_hidden_state.shape[0] != text_hidden_state.shape[0]:
                raise ValueError(
                    f"Aligned pairs need as many images ({vision_hidden_state.shape[0]}) as texts "
                    f"({text_hidden_state.shape[0]}); pass image_index / text_index for other pairs."
                )
            # Every image and text is used once: nothing to share, so each layer projects its own inputs.
            outputs = [
                self._run_pairs(
                    vision_hidden_state[start : start + chunk],
                    text_hidden_state[start : start + chunk],
                    None if attention_mask is None else attention_mask[start : start + chunk],
                    (),
                    *flags,
                )
                for start in range(0, vision_hidden_state.shape[0], chunk)
            ]
        else:
            # Layer 1's projections depend on each image / text alone. When the pairs reuse them (N x M scoring),
            # project every image and text once; when there are fewer pairs than inputs (re-ranking k of 1000
            # labels), project only the rows each chunk selects. Decided on shapes alone: no host sync.
            num_pairs = image_index.shape[0]
            vision_cache = (
                self[0].project_vision_stream(vision_hidden_state)
                if num_pairs > vision_hidden_state.shape[0]
                else None
            )
            text_cache = (
                self[0].project_text_stream(text_hidden_state) if num_pairs > text_hidden_state.shape[0] else None
            )
            outputs = []
            for images, texts in zip(image_index.split(chunk), text_index.split(chunk)):
                vision, text = vision_hidden_state.index_select(0, images), text_hidden_state.index_select(0, texts)
                vision_projection = (
                    self[0].project_vision_stream(vision) if vision_cache is None else vision_cache.select(images)
                )
                text_projection = self[0].project_text_stream(text) if text_cache is None else text_cache.select(texts)
                mask = None if attention_mask is None else attention_mask.index_select(0, texts)
                outputs.append(self._run_pairs(vision, text, mask, (*vision_projection, *text_projection), *flags))
        if len(outputs) == 1:
            return outputs[0]
        merged = {}
        for key, first_value in outputs[0].items():
            if isinstance(first_value, tuple):
                merged[key] = tuple(torch.cat(parts) for parts in zip(*(o[key] for o in outputs)))
            else:
                merged[key] = torch.cat([o[key] for o in outputs])
        return BridgeInteractionOutput(**merged)

    def _run_pairs(
        self, vision, text, mask, cache, output_attentions, output_hidden_states, output_last_hidden_state
    ) -> "BridgeInteractionOutput":
        """The stack on one chunk of pairs (row p of `vision` with row p of `text`); `cache`: layer 1's projections."""
        # Under autocast the attention runs in the autocast dtype: a float32 minimum cast to float16 would be -inf
        # (an all-padding row would then give NaN), so the bias is built in the dtype the attention computes in.
        device_type = text.device.type
        autocast = device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type)
        padding_bias = self.text_padding_bias(mask, torch.get_autocast_dtype(device_type) if autocast else text.dtype)
        # Per-layer states are kept only when asked for: holding them all would multiply the memory of each chunk.
        all_vision, all_text, text_attentions, vision_attentions = [vision], [text], [], []
        # "layer_input" pools the last layer's input projection: unless its outputs are asked for, the last layer's
        # attention and updates feed nothing, so of that layer only the projection runs.
        input_projection_only = self.config.cross_embed_source == "layer_input" and not any(
            (output_attentions, output_hidden_states, output_last_hidden_state)
        )
        for layer in list(self)[:-1] if input_projection_only else self:
            vision, text, vision_shared, text_shared, text_probs, vision_probs = layer(
                vision, text, padding_bias, *cache, output_attentions=output_attentions
            )
            cache = ()  # only the first layer's projections can be computed ahead
            if output_hidden_states:
                all_vision.append(vision)
                all_text.append(text)
            if output_attentions:
                text_attentions.append(text_probs)
                vision_attentions.append(vision_probs)
        if input_projection_only:
            # with one layer, its input projections are the cache's shared states (when it was given)
            vision_shared = cache[0] if cache else self[-1].project_vision(vision)
            text_shared = cache[4] if cache else self[-1].project_text(text)
        elif self.config.cross_embed_source == "output":
            vision_shared, text_shared = self[-1].project_vision(vision), self[-1].project_text(text)
        return BridgeInteractionOutput(
            pooled_vision=pool_tokens(vision_shared, self.config.pooling),
            pooled_text=pool_tokens(text_shared, self.config.pooling, mask),
            vision_last_hidden_state=vision if output_last_hidden_state else None,
            text_last_hidden_state=text if output_last_hidden_state else None,
            vision_hidden_states=tuple(all_vision) if output_hidden_states else None,
            text_hidden_states=tuple(all_text) if output_hidden_states else None,
            text_attentions=tuple(text_attentions) if output_attentions else None,
            vision_attentions=tuple(vision_attentions) if output_attentions else None,
        )

    def gates(self) -> torch.Tensor:
        """Sigmoid gates `[text, vision]` per layer, (num_layers, 2)."""
        return torch.stack([layer.gates() for layer in self])

    def temperatures(self) -> torch.Tensor:
        """Attention temperatures `[text<-vision, vision<-text]` per layer, (num_layers, 2)."""
        return torch.stack([layer.temperatures() for layer in self])


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
    """Linear -> LayerNorm -> GELU -> Linear: the MLM head (to the vocabulary), the MIM head (to vision features)."""

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


# --------------------------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------------------------


def keep_frozen_parts_in_eval_mode(module: nn.Module, towers=()) -> None:
    """After `module.train()`: put each tower in `towers` that has no trainable parameter, and every batch-norm layer
    whose affine parameters do not train, back into eval mode.

    A frozen tower then computes exactly what a cache of its states holds (`cache_tower_states` runs in eval mode):
    no dropout noise on its outputs, and no batch-norm running statistics updated from every batch (which would
    also make a LoRA adapter, saved without them, fail to reproduce the trained model)."""
    for tower in towers:
        if not any(p.requires_grad for p in tower.parameters()):
            tower.eval()
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm) and not any(
            p.requires_grad for p in layer.parameters(recurse=False)
        ):
            layer.eval()


_SAVE_LOCK = threading.RLock()


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
    # The Auto class whose `auto_map` entry names this class in saved Hub code (set from BRIDGE_MODEL_CLASSES).
    _default_auto_class = "AutoModel"
    # The pair score `modeling_bridge.retrieval.search` re-ranks by when not told (`rerank="default"`).
    search_rerank = "fused"

    def _init_weights(self, module):
        """transformers' own init (normal(initializer_range) linears, unit norms) plus BRIDGE's parameters: each
        learned scalar at its init value, positional-bias tables at zero. Towers passed in keep their weights
        (the `init` helpers skip initialised parameters)."""
        if isinstance(module, BridgeScalar):
            init.constant_(module.value, module.init_value)
        elif isinstance(module, BridgeCrossAttention) and module.position_bias is not None:
            init.zeros_(module.position_bias)
        else:
            super()._init_weights(module)

    def train(self, mode: bool = True):
        """As `nn.Module.train`, except that a frozen tower (stage A) and frozen batch-norm layers stay in eval mode:
        the towers' outputs then equal their cached states (`keep_frozen_parts_in_eval_mode`)."""
        super().train(mode)
        if mode:
            bridge = getattr(self, self.base_model_prefix, self)
            keep_frozen_parts_in_eval_mode(self, (bridge.vision_model, bridge.text_model))
        return self

    def save_pretrained(self, save_directory, *args, **kwargs):
        with _SAVE_LOCK:  # the config is edited below: concurrent saves of one model take turns
            return self._save_pretrained_with_hub_code(save_directory, *args, **kwargs)

    def _save_pretrained_with_hub_code(self, save_directory, *args, **kwargs):
        # `register_for_auto_class` keeps one class only; the zero-shot pipeline needs all three mappings.
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **BRIDGE_AUTO_MAP}
        # Only a VQA model names the VQA pipeline (a BridgeModel saved from a VQA config would load a VQA head).
        from .pipelines import VQA_CUSTOM_PIPELINES  # the import also makes the saved Hub code carry pipelines.py

        if isinstance(self, BridgeForQuestionAnswering):
            self.config.custom_pipelines = json.loads(json.dumps(VQA_CUSTOM_PIPELINES))
        elif hasattr(self.config, "custom_pipelines"):
            del self.config.custom_pipelines
        if type(self)._auto_class is None:
            type(self).register_for_auto_class(self._default_auto_class)
        return super().save_pretrained(save_directory, *args, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """As `PreTrainedModel.from_pretrained`, checked (`loading_bridge.load_checked`): a missing local folder and a
        damaged safetensors file are named, and weights that miss or add BRIDGE parameters are an error."""
        return load_checked(super().from_pretrained, pretrained_model_name_or_path, *args, **kwargs)

    @classmethod
    def from_vision_text_pretrained(
        cls,
        vision_model_name_or_path: str,
        text_model_name_or_path: str,
        dtype: torch.dtype | None = None,
        **config_kwargs,
    ):
        r"""
        Build BRIDGE (this class: `BridgeModel`, `BridgeForPreTraining`) around two pretrained towers: the towers keep
        their weights bit for bit, the interaction layers and heads are new.

        vision_model_name_or_path (`str`): a vision encoder (ViT, CLIP-vision, SigLIP-vision, DINOv2, ResNet, ...),
            or a full dual-encoder checkpoint (`clip`, `siglip`, ...) whose vision part is taken. A convolutional
            tower needs `num_vision_positions` in `config_kwargs` (the cells of its last feature map).
        text_model_name_or_path (`str`): a text encoder (BERT, RoBERTa, MiniLM, ...).
        dtype (`torch.dtype`, *optional*): dtype of the whole model. The towers are read in float32, the dtype of
            the new layers, unless this is given.
        config_kwargs: `BridgeConfig` fields (`num_interaction_layers`, `shared_dim`, ...).
        """
        vision_model = load_pretrained_tower(vision_model_name_or_path, "vision_config")
        text_model = load_pretrained_tower(text_model_name_or_path, "text_config")
        config = BridgeConfig.from_vision_text_configs(vision_model.config, text_model.config, **config_kwargs)
        model = cls(config, vision_model=vision_model, text_model=text_model)
        return model if dtype is None else model.to(dtype)


class BridgeModel(BridgeInputChecks, BridgePreTrainedModel):
    """BRIDGE: vision tower + text tower + interaction encoder, the projections, `logit_scale` and the ITM head: what
    unimodal, fused and ITM scoring need. Training-only heads live in `BridgeForPreTraining`."""

    # Checkpoints saved before the pre-training heads moved to BridgeForPreTraining hold them at the top level.
    _keys_to_ignore_on_load_unexpected = [r"^(bridge\.)?(mlm_head|mim_head|itc_alpha)\."]

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
        self.vision_model = vision_model if vision_model is not None else TowerGeometry(config.vision_config).build()
        self.text_model = text_model if text_model is not None else TowerGeometry(config.text_config).build()
        # Keep one config object per tower, so that settings such as `attn_implementation` reach the towers.
        self.vision_model.config = config.vision_config
        self.text_model.config = config.text_config

        dv, dt, p = (
            TowerGeometry(config.vision_config).hidden_size,
            config.text_config.hidden_size,
            config.projection_dim,
        )
        self.interaction_layers = BridgeInteractionEncoder(config)
        self.vision_unimodal_projection = nn.Linear(dv, p)
        self.text_unimodal_projection = nn.Linear(dt, p)
        self.vision_cross_projection = nn.Linear(config.shared_dim, p)
        self.text_cross_projection = nn.Linear(config.shared_dim, p)
        self.logit_scale = BridgeScalar(config.logit_scale_init_value)
        self.itm_head = BridgeITMHead(config)
        self.post_init()

    def _prepare_text(self, input_ids, attention_mask, token_type_ids, position_ids):
        """Checked text inputs, truncated to `max_text_positions` when longer (a no-op on prepared inputs)."""
        self._check_text(input_ids, attention_mask, token_type_ids)
        if input_ids.shape[1] <= self.config.max_text_positions:
            return input_ids, attention_mask, token_type_ids, position_ids
        return self._truncate_text(input_ids, attention_mask, token_type_ids, position_ids)

    def _truncate_text(self, input_ids, attention_mask, token_type_ids, position_ids):
        """Cut texts longer than `max_text_positions` (the positional-bias table and the text tower's limit) the
        way a tokenizer's `truncation=True` does: the first `limit - 1` tokens, then the text's last real token (the
        end-of-text token of BERT/RoBERTa-style tokenizers); padding on the right. The zero-shot pipeline tokenizes
        labels without truncation, so its long labels arrive here."""
        limit = self.config.max_text_positions
        logger.warning_once(
            f"Texts of {input_ids.shape[1]} tokens are longer than the model's {limit} text positions and are "
            f"truncated to {limit} tokens (first {limit - 1} and the last). Tokenize with truncation=True, "
            f"max_length={limit} to do this yourself."
        )
        truncated = input_ids[:, :limit].clone()
        if attention_mask is None:
            truncated[:, -1] = input_ids[:, -1]
        else:
            lengths = attention_mask.sum(1)
            last = input_ids.gather(1, (lengths - 1).clamp(min=0)[:, None]).squeeze(1)
            truncated[:, -1] = torch.where(lengths > limit, last, truncated[:, -1])
        cut = [None if t is None else t[:, :limit] for t in (attention_mask, token_type_ids, position_ids)]
        return truncated, *cut

    # ---------------------------------------------------------------- unimodal encoders

    def _unimodal_output(self, tower_outputs, projection: nn.Linear, mask=None) -> BaseModelOutputWithPooling:
        pooled = pool_tokens(tower_outputs.last_hidden_state, self.config.pooling, mask)
        return BaseModelOutputWithPooling(
            last_hidden_state=tower_outputs.last_hidden_state,
            pooler_output=F.normalize(projection(pooled), dim=-1),
            hidden_states=tower_outputs.get("hidden_states"),
            attentions=tower_outputs.get("attentions"),
        )

    def _output_flags(self, output_attentions, output_hidden_states) -> tuple[bool, bool]:
        """Explicit arguments win; otherwise the config's `output_attentions` / `output_hidden_states`."""
        return (
            self.config.output_attentions if output_attentions is None else output_attentions,
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states,
        )

    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> BaseModelOutputWithPooling | tuple:
        """Vision tower states, with the normalised unimodal image embedding as `pooler_output`. Honours
        `return_dict` and the config's `output_attentions` / `output_hidden_states` / `return_dict`."""
        self._check_pixel_values(pixel_values)
        output_attentions, output_hidden_states = self._output_flags(output_attentions, output_hidden_states)
        pixels = pixel_values.to(self.vision_model.dtype)
        if pixels.dtype != pixel_values.dtype:  # e.g. raw 16-bit values overflow float16 (largest 65504) to inf
            self._check_finite(
                pixels,
                f"pixel_values in the vision tower's {pixels.dtype}",
                "They overflow that dtype: normalise the images (BridgeProcessor does) or run the tower in float32.",
            )
        outputs = self.vision_model(
            pixel_values=pixels,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        if outputs.last_hidden_state.dim() == 4:
            # A convolutional tower's (B, C, H, W) map becomes H*W tokens of width C; its `hidden_states` stay the
            # tower's own per-stage maps.
            outputs.last_hidden_state = TowerGeometry(self.config.vision_config).to_tokens(outputs.last_hidden_state)
            expected = self.config.num_vision_positions
            if outputs.last_hidden_state.shape[1] != expected:
                raise ValueError(
                    f"The convolutional vision tower turns {tuple(pixel_values.shape[-2:])}-pixel images into "
                    f"{outputs.last_hidden_state.shape[1]} tokens, but the model was built for "
                    f"num_vision_positions={expected}: resize images to the size the model was built for "
                    "(its image processor does)."
                )
        return self._unimodal_output(outputs, self.vision_unimodal_projection)

    @can_return_tuple
    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> BaseModelOutputWithPooling | tuple:
        """Text tower states, with the normalised unimodal text embedding as `pooler_output`. Texts longer than
        `max_text_positions` are truncated (with a warning). Honours `return_dict` and the config's `output_*`."""
        input_ids, attention_mask, token_type_ids, position_ids = self._prepare_text(
            input_ids, attention_mask, token_type_ids, position_ids
        )
        output_attentions, output_hidden_states = self._output_flags(output_attentions, output_hidden_states)
        return self._encode_text(
            input_ids, attention_mask, token_type_ids, position_ids, output_attentions, output_hidden_states
        )

    def _encode_text(
        self, input_ids, attention_mask, token_type_ids, position_ids, output_attentions, output_hidden_states
    ) -> BaseModelOutputWithPooling:
        """The text tower and the unimodal projection on inputs `_prepare_text` has checked."""
        # Only what was given: not every text tower takes token_type_ids (DistilBERT does not).
        extra = {
            k: v for k, v in (("token_type_ids", token_type_ids), ("position_ids", position_ids)) if v is not None
        }
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

    def interact(
        self,
        vision_hidden_state: torch.Tensor,
        text_hidden_state: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_index: torch.Tensor | None = None,
        text_index: torch.Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        output_last_hidden_state: bool = False,
        pair_chunk_size: int | None = None,
    ) -> BridgeInteractionOutput:
        """Run the interaction encoder on (image_index[p], text_index[p]) pairs of encoded images and texts (aligned
        pairs when both are None; see `BridgeInteractionEncoder`) and add each pair's fused embeddings, fused logit
        and ITM logits. Non-finite states and mask rows without a token are refused, as in `forward`."""
        self._check_states(vision_hidden_state, text_hidden_state, attention_mask)
        return self._interact(
            vision_hidden_state,
            text_hidden_state,
            attention_mask,
            image_index,
            text_index,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            output_last_hidden_state=output_last_hidden_state,
            pair_chunk_size=pair_chunk_size,
        )

    def _interact(
        self,
        vision_hidden_state,
        text_hidden_state,
        attention_mask=None,
        image_index=None,
        text_index=None,
        output_attentions=False,
        output_hidden_states=False,
        output_last_hidden_state=False,
        pair_chunk_size=None,
    ) -> BridgeInteractionOutput:
        """`interact` without the value checks, for states this model computed from checked inputs."""
        out = self.interaction_layers(
            vision_hidden_state,
            text_hidden_state,
            attention_mask,
            image_index,
            text_index,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            output_last_hidden_state=output_last_hidden_state,
            pair_chunk_size=pair_chunk_size,
        )
        cross_image_embeds = F.normalize(self.vision_cross_projection(out.pooled_vision), dim=-1)
        cross_text_embeds = F.normalize(self.text_cross_projection(out.pooled_text), dim=-1)
        out["cross_image_embeds"], out["cross_text_embeds"] = cross_image_embeds, cross_text_embeds
        out["fused_logits"] = self.fused_logits(cross_image_embeds, cross_text_embeds)
        out["itm_logits"] = self.itm_head(cross_image_embeds, cross_text_embeds)
        return out

    def encode_and_interact(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        text_index: torch.Tensor | None = None,
        output_attentions: bool = False,
        output_last_hidden_state: bool = False,
    ) -> BridgeInteractionOutput:
        """Encode images and texts once each (texts checked and truncated once, so the interaction sees the same
        mask), then interact image p with text `text_index[p]` (image i with text i when None): what the task heads
        (retrieval, VQA, visual reasoning) and the generation model's prompted path read."""
        input_ids, attention_mask, token_type_ids, position_ids = self._prepare_text(
            input_ids, attention_mask, token_type_ids, position_ids
        )
        vision = self.get_image_features(pixel_values, False, False, return_dict=True)
        text = self._encode_text(input_ids, attention_mask, token_type_ids, position_ids, False, False)
        image_index = None if text_index is None else torch.arange(pixel_values.shape[0], device=text_index.device)
        return self._interact(
            vision.last_hidden_state,
            text.last_hidden_state,
            attention_mask,
            image_index,
            text_index,
            output_attentions=output_attentions,
            output_last_hidden_state=output_last_hidden_state,
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
    ) -> BridgeInteractionOutput:
        """Interact every image (N) with every text (M): the encoder on the full index grid, `pair_chunk_size` pairs
        at a time. Every returned tensor is shaped (N, M, ...): fused logits (N, M), ITM logits (N, M, 2), and per-pair
        embeddings / states / attentions on request. The states are checked as by `interact`."""
        self._check_states(vision_hidden_state, text_hidden_state, attention_mask)
        return self._pairwise_interaction(
            vision_hidden_state, text_hidden_state, attention_mask, output_attentions, output_hidden_states
        )

    def _pairwise_interaction(
        self,
        vision_hidden_state,
        text_hidden_state,
        attention_mask,
        output_attentions=False,
        output_hidden_states=False,
    ) -> BridgeInteractionOutput:
        n_images, n_texts = vision_hidden_state.shape[0], text_hidden_state.shape[0]
        pair_ids = torch.arange(n_images * n_texts, device=vision_hidden_state.device)
        out = self._interact(
            vision_hidden_state,
            text_hidden_state,
            attention_mask,
            pair_ids // n_texts,
            pair_ids % n_texts,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )

        def grid(value):
            return (
                tuple(grid(v) for v in value) if isinstance(value, tuple) else value.unflatten(0, (n_images, n_texts))
            )

        return BridgeInteractionOutput(**{key: grid(value) for key, value in out.items()})

    def interaction_statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Gates `[text, vision]` and temperatures `[text<-vision, vision<-text]`, each (num_layers, 2)."""
        return self.interaction_layers.gates(), self.interaction_layers.temperatures()

    # ---------------------------------------------------------------- forward

    @can_return_tuple
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
        output_attentions, output_hidden_states = self._output_flags(output_attentions, output_hidden_states)
        if return_loss and (pixel_values is None or input_ids is None or pixel_values.shape[0] != input_ids.shape[0]):
            raise ValueError(
                "return_loss=True needs as many images as texts (image i matching text i); got "
                f"{None if pixel_values is None else pixel_values.shape[0]} images and "
                f"{None if input_ids is None else input_ids.shape[0]} texts."
            )

        vision_outputs = text_outputs = None
        if pixel_values is not None:
            vision_outputs = self.get_image_features(
                pixel_values, output_attentions, output_hidden_states, return_dict=True
            )
        if input_ids is not None:
            # Checked and truncated here, once, so that the interaction sees the same (truncated) mask.
            input_ids, attention_mask, token_type_ids, position_ids = self._prepare_text(
                input_ids, attention_mask, token_type_ids, position_ids
            )
            text_outputs = self._encode_text(
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
                pairs = self._pairwise_interaction(
                    vision_outputs.last_hidden_state,
                    text_outputs.last_hidden_state,
                    attention_mask,
                    output_attentions=output_attentions,
                    output_hidden_states=output_hidden_states,
                )
                logits_per_image = pair_score(pairs, score)
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
            cross_image_embeds=pairs.get("cross_image_embeds") if output_hidden_states else None,
            cross_text_embeds=pairs.get("cross_text_embeds") if output_hidden_states else None,
            vision_model_output=vision_outputs,
            text_model_output=text_outputs,
            interaction_vision_hidden_states=pairs.get("vision_hidden_states"),
            interaction_text_hidden_states=pairs.get("text_hidden_states"),
            interaction_text_attentions=pairs.get("text_attentions"),
            interaction_vision_attentions=pairs.get("vision_attentions"),
            gate_values=gates,
            temperatures=temperatures,
        )
        return output


# --------------------------------------------------------------------------------------------------------------------
# Pre-training objectives
# --------------------------------------------------------------------------------------------------------------------


class BridgeForPreTraining(BridgePreTrainedModel):
    """BRIDGE with its pre-training objectives: dual ITC, ITM on mined hard negatives, MLM, MIM
    and attention cycle-consistency, weighted by the config's `*_loss_weight` fields (0 disables one).

    Inputs are aligned pairs: image i is described by text i. Under torch.distributed the contrastive terms and the
    negative mining use the global batch (embeddings and tower states gathered with gradient); every rank needs the
    same local batch size, as Trainer's distributed sampler provides.
    """

    # forward takes no `num_items_in_batch`: the Trainer must not rescale its loss.
    accepts_loss_kwargs = False
    # Seed of the negative sampling in eval mode, so that eval losses are reproducible (training draws from torch's
    # global generator, which Trainer seeds and checkpoints).
    eval_mining_seed = 0

    def __init__(
        self,
        config: BridgeConfig | None = None,
        vision_model: PreTrainedModel | None = None,
        text_model: PreTrainedModel | None = None,
    ):
        bridge = BridgeModel(config, vision_model=vision_model, text_model=text_model)
        super().__init__(bridge.config)
        config = bridge.config
        dv, dt = TowerGeometry(config.vision_config).hidden_size, config.text_config.hidden_size
        self.bridge = bridge
        # Training-only: sigmoid(itc_alpha) mixes cross and unimodal ITC; the MLM head reads the final text states,
        # the MIM head the final vision states. The MLM decoder is not tied to the text tower's word embeddings: the
        # original does not tie it, and the recipe freezes the embeddings in every stage, which would freeze it too.
        self.itc_alpha = BridgeScalar(config.itc_alpha_init_value)
        self.mlm_head = BridgePredictionHead(dt, config.text_config.vocab_size)
        self.mim_head = BridgePredictionHead(dv, dv)
        self.post_init()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """Also reads checkpoints saved before the pre-training heads moved here from BridgeModel (`bridge.mlm_head.*`
        -> `mlm_head.*`, and the same for `mim_head` and `itc_alpha`)."""
        legacy = r"^bridge\.(mlm_head|mim_head|itc_alpha)\."
        key_mapping = {legacy: r"\1.", **(kwargs.pop("key_mapping", None) or {})}
        loaded = super().from_pretrained(pretrained_model_name_or_path, *args, key_mapping=key_mapping, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        # transformers reverts load-time renamings on save; this one is a migration, so saves use the new layout.
        conversions = getattr(model, "_weight_conversions", None)
        if isinstance(conversions, list):
            model._weight_conversions = [c for c in conversions if legacy not in getattr(c, "source_patterns", ())]
        return loaded

    def get_image_features(self, *args, **kwargs) -> BaseModelOutputWithPooling:
        return self.bridge.get_image_features(*args, **kwargs)

    def get_text_features(self, *args, **kwargs) -> BaseModelOutputWithPooling:
        return self.bridge.get_text_features(*args, **kwargs)

    def _precomputed_tower_output(self, part, states, input_ids, attention_mask=None) -> BaseModelOutputWithPooling:
        """A tower's output rebuilt from its precomputed final states: the states and the unimodal embedding."""
        bridge = self.bridge
        tower = bridge.vision_model if part == "vision" else bridge.text_model
        if self.training and any(p.requires_grad for p in tower.parameters()):
            raise ValueError(
                f"{part}_hidden_state was given in training mode, but the {part} tower has trainable parameters: it "
                "would not learn. Freeze it (e.g. set_tower_trainable_blocks(tower, 0)) or pass the raw inputs."
            )
        if part == "vision":
            width, length = TowerGeometry(self.config.vision_config).hidden_size, self.config.num_vision_positions
        else:
            width, length = self.config.text_config.hidden_size, input_ids.shape[1]
        if not (isinstance(states, torch.Tensor) and states.is_floating_point()):
            raise TypeError(f"{part}_hidden_state must be a floating-point torch.Tensor, got {type(states).__name__}.")
        if states.dim() != 3 or tuple(states.shape[1:]) != (length, width):
            raise ValueError(
                f"{part}_hidden_state has shape {tuple(states.shape)}; this model needs (batch, {length}, {width}) "
                f"(the {part} tower's final states{'' if part == 'vision' else ' for the given input_ids'})."
            )
        bridge._check_finite(
            states,
            f"{part}_hidden_state",
            "A tower-state cache holding them is damaged: compute it again (cache_tower_states(..., overwrite=True)).",
        )
        projection = bridge.vision_unimodal_projection if part == "vision" else bridge.text_unimodal_projection
        states = states.to(projection.weight.dtype)
        return bridge._unimodal_output(
            BaseModelOutputWithPooling(last_hidden_state=states), projection, attention_mask
        )

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        mlm_input_ids: torch.LongTensor | None = None,
        mlm_labels: torch.LongTensor | None = None,
        mim_mask: torch.BoolTensor | None = None,
        return_loss: bool | None = True,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        vision_hidden_state: torch.FloatTensor | None = None,
        text_hidden_state: torch.FloatTensor | None = None,
    ) -> BridgeForPreTrainingOutput | tuple:
        r"""
        vision_hidden_state (`(batch, num_vision_positions, dv)`) / text_hidden_state (`(batch, Nt, dt)`), *optional*:
            a frozen tower's final states computed ahead (e.g. by `modeling_bridge.training.cache_tower_states`),
            used instead of running that tower; `pixel_values` may then be omitted. `input_ids` and
            `attention_mask` are still needed (identical captions never serve as negatives). A tower with
            trainable parameters cannot be replaced in training mode: it would silently stop learning.
        mlm_input_ids (`torch.LongTensor` of shape `(batch, Nt)`): the texts with masked tokens (MLM input).
        mlm_labels (`torch.LongTensor` of shape `(batch, Nt)`): original ids at masked positions, -100 elsewhere.
        mim_mask (`torch.BoolTensor` of shape `(batch, num_patches)`): patches hidden from the MIM pass.
        return_loss (`bool`, defaults to True): compute the objectives (True by default so that Trainer's
            evaluation reports `eval_loss`).
        output_attentions / output_hidden_states (`bool`, *optional*): return the towers' attentions / hidden states
            (in `vision_model_output` / `text_model_output`); attentions also return the interaction's attention
            maps of the positive pairs. Default: the config's values.
        """
        images = pixel_values if vision_hidden_state is None else vision_hidden_state
        if input_ids is None or images is None:
            raise ValueError(
                "BridgeForPreTraining needs both pixel_values (or vision_hidden_state) and input_ids: aligned pairs, "
                "image i described by text i."
            )
        if images.shape[0] != input_ids.shape[0]:
            raise ValueError(
                f"Got {images.shape[0]} images and {input_ids.shape[0]} texts; pre-training "
                "takes aligned pairs (image i described by text i), so the counts must match."
            )
        config, bridge = self.config, self.bridge
        if input_ids.dim() == 2 and input_ids.shape[1] > config.max_text_positions:
            raise ValueError(
                f"Texts of {input_ids.shape[1]} tokens exceed the model's {config.max_text_positions} text positions; "
                f"tokenize training text with truncation=True, max_length={config.max_text_positions} (e.g. "
                "BridgeDataCollator(max_length=config.max_text_positions)) so that masks and MLM labels line up."
            )
        output_attentions, output_hidden_states = bridge._output_flags(output_attentions, output_hidden_states)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if vision_hidden_state is None:
            vision = bridge.get_image_features(pixel_values, output_attentions, output_hidden_states, return_dict=True)
        else:
            vision = self._precomputed_tower_output("vision", vision_hidden_state, input_ids)
        if text_hidden_state is None:
            text = bridge.get_text_features(
                input_ids,
                attention_mask,
                token_type_ids,
                position_ids,
                output_attentions,
                output_hidden_states,
                return_dict=True,
            )
        else:
            text = self._precomputed_tower_output("text", text_hidden_state, input_ids, attention_mask)
        rank, world = distributed_rank_and_world()
        batch = input_ids.shape[0]
        if return_loss and batch * world < 2:
            logger.warning_once(
                "BridgeForPreTraining got a batch of 1 pair: the contrastive losses have no negative, so ITC is 0 "
                "and ITM sees no mismatched pair. Train with at least 2 pairs per batch (e.g. "
                "dataloader_drop_last=True when the last batch could hold one)."
            )
        targets = torch.arange(batch, device=input_ids.device) + rank * batch
        scale = bridge.logit_scale().exp()
        all_image_embeds = gather_across_ranks(vision.pooler_output)
        all_text_embeds = gather_across_ranks(text.pooler_output)
        logits_per_image = scale * vision.pooler_output @ all_text_embeds.t()
        logits_per_text = scale * text.pooler_output @ all_image_embeds.t()

        fields = dict(
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_text,
            image_embeds=vision.pooler_output,
            text_embeds=text.pooler_output,
            vision_model_output=vision if output_attentions or output_hidden_states else None,
            text_model_output=text if output_attentions or output_hidden_states else None,
        )
        if return_loss:
            generator = None
            if not self.training:  # reproducible eval losses; one generator for both directions
                generator = torch.Generator(device=input_ids.device).manual_seed(self.eval_mining_seed)
            inputs = dict(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=token_type_ids,
                position_ids=position_ids,
                pixel_values=pixel_values,
                mlm_input_ids=mlm_input_ids,
                mlm_labels=mlm_labels,
                mim_mask=mim_mask,
            )
            objective = BridgePreTrainingLoss(config, generator)
            fields.update(
                objective(
                    self, vision, text, inputs, logits_per_image, logits_per_text, targets, scale, output_attentions
                )
            )
        return BridgeForPreTrainingOutput(**{k: v for k, v in fields.items() if v is not None})


# --------------------------------------------------------------------------------------------------------------------
# Task heads
# --------------------------------------------------------------------------------------------------------------------


class BridgeTaskModel(BridgePreTrainedModel):
    """Base of the task heads: a `BridgeModel` (`self.bridge`) whose (image i, text i) pairs run through the
    interaction layers, and a head on what comes out. Any BRIDGE folder starts one: a pre-training checkpoint's heads
    are left behind. A head adds its layers in `_init_head` and reads `_interact_aligned`'s output (`pair_features`
    for a classifier)."""

    _keys_to_ignore_on_load_unexpected = [r"^(mlm_head|mim_head|itc_alpha)\."]
    # How the head's error messages name the text of a pair ("questions", "statements", ...).
    text_role = "texts"

    def __init__(
        self,
        config: BridgeConfig | None = None,
        vision_model: PreTrainedModel | None = None,
        text_model: PreTrainedModel | None = None,
    ):
        bridge = BridgeModel(config, vision_model=vision_model, text_model=text_model)
        super().__init__(bridge.config)
        self.bridge = bridge
        self._init_head(bridge.config)
        self.post_init()

    def _init_head(self, config: BridgeConfig) -> None:
        """Add the head's own layers (none by default)."""

    def _interact_aligned(
        self, pixel_values, input_ids, attention_mask, token_type_ids, position_ids, output_attentions, text_index=None
    ) -> BridgeInteractionOutput:
        """Image i with text i (or with text `text_index[i]`, the caller having checked the pairing) through the towers
        and the interaction layers."""
        if text_index is None:
            check_aligned(pixel_values, input_ids, type(self).__name__, self.text_role)
        output_attentions = self.bridge._output_flags(output_attentions, None)[0]
        return self.bridge.encode_and_interact(
            pixel_values,
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            text_index=text_index,
            output_attentions=output_attentions,
        )

    @staticmethod
    def pair_features(out: BridgeInteractionOutput) -> torch.Tensor:
        """`[c_v ; c_t ; c_v * c_t]` of each pair's fused embeddings: what the classification heads read."""
        image, text = out.cross_image_embeds, out.cross_text_embeds
        return torch.cat([image, text, image * text], dim=-1)

    @staticmethod
    def pair_classifier(in_features: int, hidden: int, num_labels: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Linear(in_features, hidden), nn.GELU(), nn.LayerNorm(hidden), nn.Linear(hidden, num_labels)
        )


class BridgeForQuestionAnswering(BridgeTaskModel):
    """Visual question answering as classification over an answer vocabulary (`config.id2label`): each (image,
    question) pair runs through the interaction layers, and an MLP reads `[c_v ; c_t ; c_v * c_t]` of its fused
    embeddings. Trained with soft targets (the VQA score of each answer, e.g. min(1, annotators / 3)) and BCE."""

    text_role = "questions"

    def _init_head(self, config: BridgeConfig) -> None:
        p = config.projection_dim
        self.classifier = self.pair_classifier(3 * p, 2 * p, config.num_labels)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        labels: torch.FloatTensor | None = None,
        output_attentions: bool | None = None,
    ) -> BridgeForQuestionAnsweringOutput | tuple:
        r"""
        Image i with question i (aligned pairs).

        labels (`torch.FloatTensor` of shape `(batch, num_labels)`, *optional*): the score of each answer in [0, 1]
            (soft VQA targets; a one-hot row for a single answer). A score outside [0, 1] is an error (read on CPU;
            on an accelerator with `check_token_ids`).
        """
        out = self._interact_aligned(
            pixel_values, input_ids, attention_mask, token_type_ids, position_ids, output_attentions
        )
        logits = self.classifier(self.pair_features(out))
        loss = None
        if labels is not None:
            labels = checked_answer_scores(self, labels, logits)
            loss = F.binary_cross_entropy_with_logits(logits, labels) * logits.shape[1]
        return BridgeForQuestionAnsweringOutput(
            loss=loss,
            logits=logits,
            cross_image_embeds=out.cross_image_embeds,
            cross_text_embeds=out.cross_text_embeds,
            interaction_text_attentions=out.text_attentions,
            interaction_vision_attentions=out.vision_attentions,
        )


def _search_module():
    # The search code lives in the installed package (it needs `datasets`); Hub code alone does not carry it.
    try:
        from modeling_bridge import retrieval
    except ImportError as error:
        raise ImportError(
            "Gallery search needs the modeling-bridge package (pip install 'modeling-bridge[search]'); the Hub code "
            "files hold the model only."
        ) from error
    return retrieval


class BridgeForImageTextRetrieval(BridgeTaskModel):
    """Image-text matching and search. `forward` scores aligned pairs (image i with text i) with the ITM head, as
    transformers' `BridgeTowerForImageAndTextRetrieval` does; `build_gallery` / `search` run two-stage retrieval
    (unimodal top-k, then the k pairs re-ranked by the ITM or fused score). It adds no weights to `BridgeModel`'s, so
    any BRIDGE folder loads into it."""

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
    ) -> BridgeForImageTextRetrievalOutput | tuple:
        r"""
        Image i with text i (aligned pairs); for every image against every text use `BridgeModel` (`score="itm"`).

        labels (`torch.LongTensor` of shape `(batch,)`, *optional*): 1 where text i describes image i, else 0 (-100:
            left out of the loss). Other values are an error (read on CPU; on an accelerator with `check_token_ids`).
        """
        out = self._interact_aligned(
            pixel_values, input_ids, attention_mask, token_type_ids, position_ids, output_attentions
        )
        loss = None
        if labels is not None:
            loss = binary_label_loss(self, out.itm_logits, labels, "image-text match")
        return BridgeForImageTextRetrievalOutput(
            loss=loss,
            logits=out.itm_logits,
            fused_logits=out.fused_logits,
            cross_image_embeds=out.cross_image_embeds,
            cross_text_embeds=out.cross_text_embeds,
            interaction_text_attentions=out.text_attentions,
            interaction_vision_attentions=out.vision_attentions,
        )

    def build_gallery(self, processor, images=None, texts=None, **kwargs):
        """Embed a gallery of images or texts once (`modeling_bridge.retrieval.build_gallery`)."""
        return _search_module().build_gallery(self, processor, images=images, texts=texts, **kwargs)

    # The pair score `modeling_bridge.retrieval.search` re-ranks by when not told (`rerank="default"`).
    search_rerank = "itm"

    def search(self, processor, gallery, queries, k: int = 32, rerank: str | None = "default", **kwargs):
        """Two-stage search of `queries` in `gallery`, re-ranked by `search_rerank` (the ITM score) by default
        (`modeling_bridge.retrieval.search`)."""
        return _search_module().search(self, processor, gallery, queries, k=k, rerank=rerank, **kwargs)


class BridgeForVisualReasoning(BridgeTaskModel):
    """NLVR2-style reasoning: a statement about two images (left, right), true or false. Each image interacts with
    the statement on its own; an MLP reads the two pairs' `[c_v ; c_t ; c_v * c_t]`, in image order (the statement
    may name "the left image"), as transformers' `ViltForImagesAndTextClassification` reads its pooled states."""

    text_role = "statements"

    def _init_head(self, config: BridgeConfig) -> None:
        p = config.projection_dim
        self.classifier = self.pair_classifier(3 * p * config.num_images, 2 * p, 2)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
    ) -> BridgeForVisualReasoningOutput | tuple:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch, num_images, channels, height, width)`): the images of each
            statement, left first (`config.num_images`, 2 for NLVR2).
        labels (`torch.LongTensor` of shape `(batch,)`, *optional*): 1 where the statement is true, else 0 (-100:
            left out of the loss). Other values are an error (read on CPU; on an accelerator with `check_token_ids`).
        """
        num_images = self.config.num_images
        if input_ids is None or pixel_values is None:
            raise ValueError("BridgeForVisualReasoning needs pixel_values and input_ids: images and a statement.")
        if pixel_values.dim() != 5 or pixel_values.shape[1] != num_images:
            raise ValueError(
                f"pixel_values must be (batch, {num_images}, channels, height, width): the {num_images} images of "
                f"each statement; got shape {tuple(pixel_values.shape)}."
            )
        check_aligned(pixel_values, input_ids, type(self).__name__, self.text_role)
        batch = input_ids.shape[0]
        text_index = torch.arange(batch, device=input_ids.device).repeat_interleave(num_images)
        out = self._interact_aligned(
            pixel_values.flatten(0, 1),
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            output_attentions,
            text_index=text_index,
        )
        logits = self.classifier(self.pair_features(out).view(batch, -1))
        loss = None if labels is None else binary_label_loss(self, logits, labels, "statement")
        return BridgeForVisualReasoningOutput(
            loss=loss,
            logits=logits,
            cross_image_embeds=out.cross_image_embeds.view(batch, num_images, -1),
            cross_text_embeds=out.cross_text_embeds.view(batch, num_images, -1),
            interaction_text_attentions=out.text_attentions,
            interaction_vision_attentions=out.vision_attentions,
        )


# The one table of BRIDGE's model classes and the Auto classes that load them, the first being the class's own (its
# `_default_auto_class`). The saved `auto_map` (BRIDGE_AUTO_MAP) and the package's registrations
# (`modeling_bridge/__init__.py`) derive from it: a new head is its class and a row here. The Auto classes that
# transformers lacks (retrieval, visual reasoning) are this package's own, in `modeling_bridge.auto`.
BRIDGE_MODEL_CLASSES = {
    BridgeModel: ("AutoModel", "AutoModelForZeroShotImageClassification"),
    BridgeForPreTraining: ("AutoModelForPreTraining",),
    BridgeForQuestionAnswering: ("AutoModelForVisualQuestionAnswering",),
    BridgeForImageTextRetrieval: ("AutoModelForImageTextRetrieval",),
    BridgeForVisualReasoning: ("AutoModelForVisualReasoning",),
}
BRIDGE_AUTO_MAP = {
    "AutoConfig": "configuration_bridge.BridgeConfig",
    **{auto: f"modeling_bridge.{cls.__name__}" for cls, autos in BRIDGE_MODEL_CLASSES.items() for auto in autos},
}
for _model_class, _auto_classes in BRIDGE_MODEL_CLASSES.items():
    _model_class._default_auto_class = _auto_classes[0]


__all__ = [
    "BRIDGE_AUTO_MAP",
    "BRIDGE_MODEL_CLASSES",
    "BridgeCrossAttention",
    "BridgeForPreTraining",
    "BridgeForImageTextRetrieval",
    "BridgeForImageTextRetrievalOutput",
    "BridgeForPreTrainingOutput",
    "BridgeForQuestionAnswering",
    "BridgeForQuestionAnsweringOutput",
    "BridgeInteractionLayer",
    "BridgeInteractionOutput",
    "BridgeForVisualReasoning",
    "BridgeForVisualReasoningOutput",
    "BridgeModel",
    "BridgeOutput",
    "BridgePreTrainedModel",
    "BridgeTaskModel",
    "pair_score",
]
