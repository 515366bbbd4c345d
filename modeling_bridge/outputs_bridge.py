"""BRIDGE's model outputs (`ModelOutput` dataclasses), as transformers keeps its shared ones in `modeling_outputs.py`.

Hub code: imports only torch and transformers; saved next to the weights with `modeling_bridge.py`.
"""

from dataclasses import dataclass
from typing import Any

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput


@dataclass
class BridgeInteractionOutput(ModelOutput):
    r"""
    Result of running the interaction encoder on image-text pairs (one row per pair, or (N, M, ...) from
    `BridgeModel.pairwise_interaction`).

    pooled_vision / pooled_text (`torch.FloatTensor` of shape `(pairs, shared_dim)`): pooled shared-space states of
        each pair, what the cross projections read (`config.cross_embed_source`).
    cross_image_embeds / cross_text_embeds (`torch.FloatTensor` of shape `(pairs, projection_dim)`): normalised fused
        embeddings (added by `BridgeModel.interact`).
    fused_logits (`torch.FloatTensor` of shape `(pairs,)`): `logit_scale * <c_v, c_t>`.
    itm_logits (`torch.FloatTensor` of shape `(pairs, 2)`): ITM head `[no-match, match]` logits.
    vision_last_hidden_state / text_last_hidden_state (`torch.FloatTensor` of shape `(pairs, N, d)`): states after
        the last layer, with `output_last_hidden_state=True`.
    vision_hidden_states / text_hidden_states (`tuple(torch.FloatTensor)`): the stack's input and every layer's
        output (L + 1 tensors), when `output_hidden_states=True`.
    text_attentions (`tuple(torch.FloatTensor)` of shape `(pairs, heads, Nt, Nv)`): text-queries-vision attention
        probabilities per layer, when `output_attentions=True`.
    vision_attentions (`tuple(torch.FloatTensor)` of shape `(pairs, heads, Nv, Nt)`): vision-queries-text attention
        probabilities per layer, when `output_attentions=True`.
    """

    pooled_vision: torch.FloatTensor | None = None
    pooled_text: torch.FloatTensor | None = None
    cross_image_embeds: torch.FloatTensor | None = None
    cross_text_embeds: torch.FloatTensor | None = None
    fused_logits: torch.FloatTensor | None = None
    itm_logits: torch.FloatTensor | None = None
    vision_last_hidden_state: torch.FloatTensor | None = None
    text_last_hidden_state: torch.FloatTensor | None = None
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


@dataclass
class BridgeForPreTrainingOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor`): weighted sum of the enabled components (weights from the config).
    itc_loss (`torch.FloatTensor`): dual contrastive loss `s * cross_itc_loss + (1 - s) * unimodal_itc_loss`,
        `s = sigmoid(itc_alpha)`.
    unimodal_itc_loss / cross_itc_loss (`torch.FloatTensor`): its two parts. With `fused_objective="pairwise"` the
        cross part is the listwise softmax over each anchor's positive and mined negatives, both directions.
    itm_loss, mlm_loss, mim_loss, cycle_loss (`torch.FloatTensor`): the other components, when enabled.
    logits_per_image / logits_per_text (`torch.FloatTensor` of shape `(batch, global_batch)`): unimodal scores of the
        local images (texts) against the texts (images) of every rank.
    image_embeds / text_embeds (`torch.FloatTensor` of shape `(batch, projection_dim)`): unimodal embeddings.
    cross_image_embeds / cross_text_embeds (`torch.FloatTensor` of shape `(batch, projection_dim)`): fused embeddings
        of the aligned (positive) pairs.
    itm_logits (`torch.FloatTensor` of shape `(num_pairs, 2)`) and itm_labels (`torch.LongTensor` of shape
        `(num_pairs,)`): every pair the ITM loss scored, 1 = match, 0 = mined negative, -100 = no valid negative.
    mlm_logits (`torch.FloatTensor` of shape `(batch, Nt, vocab_size)`), mim_logits (`torch.FloatTensor` of shape
        `(batch, num_patches, dv)`): predictions of the masked pass, when MLM / MIM are enabled.
    vision_model_output / text_model_output (`BaseModelOutputWithPooling`): the towers' outputs, when
        `output_attentions` or `output_hidden_states` is set.
    interaction_text_attentions / interaction_vision_attentions (`tuple(torch.FloatTensor)`): per layer, the attention
        maps of the positive pairs, `(batch, heads, Nt, Nv)` / `(batch, heads, Nv, Nt)`, with `output_attentions`.
    """

    loss: torch.FloatTensor | None = None
    itc_loss: torch.FloatTensor | None = None
    unimodal_itc_loss: torch.FloatTensor | None = None
    cross_itc_loss: torch.FloatTensor | None = None
    itm_loss: torch.FloatTensor | None = None
    mlm_loss: torch.FloatTensor | None = None
    mim_loss: torch.FloatTensor | None = None
    cycle_loss: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    cross_image_embeds: torch.FloatTensor | None = None
    cross_text_embeds: torch.FloatTensor | None = None
    itm_logits: torch.FloatTensor | None = None
    itm_labels: torch.LongTensor | None = None
    mlm_logits: torch.FloatTensor | None = None
    mim_logits: torch.FloatTensor | None = None
    vision_model_output: BaseModelOutputWithPooling | None = None
    text_model_output: BaseModelOutputWithPooling | None = None
    interaction_text_attentions: tuple[torch.FloatTensor, ...] | None = None
    interaction_vision_attentions: tuple[torch.FloatTensor, ...] | None = None

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(
            self[k].to_tuple() if k in ("vision_model_output", "text_model_output") else self[k] for k in self.keys()
        )


@dataclass
class BridgeForQuestionAnsweringOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor`): binary cross-entropy against the soft answer scores, summed over answers and averaged
        over questions (the usual VQA objective).
    logits (`torch.FloatTensor` of shape `(batch, num_labels)`): a score per answer of `config.id2label`.
    cross_image_embeds / cross_text_embeds (`torch.FloatTensor` of shape `(batch, projection_dim)`): the fused
        embeddings of each (image, question) pair, which the classifier reads.
    interaction_text_attentions / interaction_vision_attentions (`tuple(torch.FloatTensor)`): per interaction layer,
        on `output_attentions`: question tokens over image tokens and the reverse.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cross_image_embeds: torch.FloatTensor | None = None
    cross_text_embeds: torch.FloatTensor | None = None
    interaction_text_attentions: tuple[torch.FloatTensor, ...] | None = None
    interaction_vision_attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class BridgeForImageTextRetrievalOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor`, *optional*): cross-entropy of the ITM logits against `labels` (1: match, 0: not).
    logits (`torch.FloatTensor` of shape `(batch, 2)`): ITM `[no-match, match]` logits of each (image i, text i) pair.
    fused_logits (`torch.FloatTensor` of shape `(batch,)`): the pairs' fused scores, `logit_scale * <c_v, c_t>`.
    cross_image_embeds / cross_text_embeds (`torch.FloatTensor` of shape `(batch, projection_dim)`): fused embeddings.
    interaction_text_attentions / interaction_vision_attentions (`tuple(torch.FloatTensor)`): per interaction layer,
        on `output_attentions`: text tokens over image tokens and the reverse.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    fused_logits: torch.FloatTensor | None = None
    cross_image_embeds: torch.FloatTensor | None = None
    cross_text_embeds: torch.FloatTensor | None = None
    interaction_text_attentions: tuple[torch.FloatTensor, ...] | None = None
    interaction_vision_attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class BridgeForVisualReasoningOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor`, *optional*): cross-entropy against `labels` (1: the statement is true).
    logits (`torch.FloatTensor` of shape `(batch, 2)`): `[false, true]` logits of each (left, right, statement).
    cross_image_embeds / cross_text_embeds (`torch.FloatTensor` of shape `(batch, num_images, projection_dim)`): the
        fused embeddings of each image with the statement.
    interaction_text_attentions / interaction_vision_attentions (`tuple(torch.FloatTensor)`): per interaction layer,
        on `output_attentions`, for the `batch * num_images` (image, statement) pairs, image-major.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cross_image_embeds: torch.FloatTensor | None = None
    cross_text_embeds: torch.FloatTensor | None = None
    interaction_text_attentions: tuple[torch.FloatTensor, ...] | None = None
    interaction_vision_attentions: tuple[torch.FloatTensor, ...] | None = None


__all__ = [
    "BridgeInteractionOutput",
    "BridgeOutput",
    "BridgeForPreTrainingOutput",
    "BridgeForQuestionAnsweringOutput",
    "BridgeForImageTextRetrievalOutput",
    "BridgeForVisualReasoningOutput",
]
