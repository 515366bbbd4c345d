"""BRIDGE's pre-training losses, hard-negative mining and cross-rank gathering.

Hub code: imports only torch and its siblings `.configuration_bridge` and `.towers_bridge`, so that it is saved next
to the weights with `modeling_bridge.py` (which imports it relatively) and loads with ``trust_remote_code=True``.
Everything that knows about `torch.distributed` lives here.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .configuration_bridge import LOSS_NAMES
from .towers_bridge import TowerGeometry


def contrastive_loss(logits: torch.Tensor) -> torch.Tensor:
    """Symmetric cross-entropy of a square (images x texts) score matrix whose diagonal holds the matches."""
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


def distributed_rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def gather_across_ranks(tensor: torch.Tensor, with_grad: bool = True) -> torch.Tensor:
    """Concatenate `tensor` from every rank along dim 0 (rank order); identity without torch.distributed.

    With `with_grad`, gradients flow back to the rank that produced each part, so contrastive negatives from other
    ranks train those ranks' encoders too (DDP's gradient averaging then equals one process over the global batch).
    """
    _, world = distributed_rank_and_world()
    if world == 1:
        return tensor
    if with_grad:
        from torch.distributed.nn.functional import all_gather

        return torch.cat(all_gather(tensor), dim=0)
    parts = [torch.empty_like(tensor) for _ in range(world)]
    torch.distributed.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def pad_sequence_dim(tensor: torch.Tensor, length: int, value=0) -> torch.Tensor:
    """Right-pad dim 1 of (B, N, ...) to `length`."""
    extra = length - tensor.shape[1]
    return tensor if extra == 0 else F.pad(tensor, [0, 0] * (tensor.dim() - 2) + [0, extra], value=value)


def mine_hard_negatives(
    similarity: torch.Tensor,
    positive_index: torch.Tensor,
    num_negatives: int,
    margin_min: float,
    margin_max: float,
    exclude: torch.Tensor | None = None,
    semi_hard: bool = True,
    generator: torch.Generator | None = None,
    num_hardest: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick `num_negatives` negatives per anchor (row), vectorised.

    similarity (A, C): cosine similarity of each anchor to each candidate; positive_index (A,): each anchor's positive
    column; exclude (A, C) bool: candidates that must not serve as negatives (e.g. an identical caption).
    The first `num_hardest` negatives are the most similar candidates (those the semi-hard band leaves out by
    construction, such as an attribute-swapped twin). For the rest, with `semi_hard`, candidates in the band
    `S_ii - margin_max < S_ij < S_ii - margin_min` come first, in random order, and the most similar remaining
    candidates fill up ("fallback hardest"); without, the most similar candidates are taken. Returns indices (A, k)
    and a validity mask (A, k) that is False where fewer than k candidates were allowed;
    k = min(num_negatives, C - 1). `generator` draws the random order within the band (default: torch's global
    generator).
    """
    with torch.no_grad():
        similarity = similarity.detach().float()
        key = similarity
        if semi_hard:
            positive = similarity.gather(1, positive_index[:, None])
            band = (similarity > positive - margin_max) & (similarity < positive - margin_min)
            # Cosines are <= 1, so keys in [2, 3) put every in-band candidate ahead of the rest.
            noise = torch.rand(similarity.shape, device=similarity.device, generator=generator)
            key = torch.where(band, 2.0 + noise, similarity)
        invalid = F.one_hot(positive_index, similarity.shape[1]).bool()
        if exclude is not None:
            invalid = invalid | exclude
        num_hardest = min(num_hardest, num_negatives, similarity.shape[1] - 1)
        if num_hardest > 0:
            # Keys above the band's [2, 3) put the hardest candidates first.
            hardest = similarity.masked_fill(invalid, float("-inf")).topk(num_hardest, dim=1).indices
            key = key.scatter(1, hardest, 4.0 + similarity.gather(1, hardest))
        key = key.masked_fill(invalid, float("-inf"))
        values, indices = key.topk(min(num_negatives, similarity.shape[1] - 1), dim=1)
        return indices, values > float("-inf")


def match_loss(positive_logits: torch.Tensor, negative_logits: torch.Tensor, negative_valid=None) -> torch.Tensor:
    """ITM objective on the match logit: (mean -log sigmoid(r_pos) + mean -log(1 - sigmoid(r_neg))) / 2.

    As in the original, only the head's match logit (index 1) is trained: read `sigmoid(itm_logits[..., 1])` as the
    match probability, not a softmax over the two outputs."""
    negative_terms = F.softplus(negative_logits)
    if negative_valid is None:
        negative = negative_terms.mean()
    else:
        weights = negative_valid.to(negative_terms.dtype)
        negative = (negative_terms * weights).sum() / weights.sum().clamp(min=1.0)
    return (F.softplus(-positive_logits).mean() + negative) / 2


def listwise_loss(positive_logits: torch.Tensor, negative_logits: torch.Tensor, negative_valid=None) -> torch.Tensor:
    """Cross-entropy of each positive (A,) against its own negatives (A, k): a softmax over {positive} u negatives."""
    if negative_valid is not None:
        negative_logits = negative_logits.masked_fill(~negative_valid, float("-inf"))
    logits = torch.cat([positive_logits[:, None], negative_logits], dim=1)
    return F.cross_entropy(logits, torch.zeros_like(positive_logits, dtype=torch.long))


def cycle_consistency_loss(
    text_attentions: tuple[torch.Tensor, ...],
    vision_attentions: tuple[torch.Tensor, ...],
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over layers of -log diag(P_t<-v P_v<-t) and -log diag(P_v<-t P_t<-v) (head-averaged maps), the two
    directions averaged; padded text positions are left out of the text term. Only the diagonals are computed."""
    total = 0.0
    for text_probs, vision_probs in zip(text_attentions, vision_attentions):
        text_from_vision, vision_from_text = text_probs.mean(1), vision_probs.mean(1)  # (B, Nt, Nv), (B, Nv, Nt)
        text_diagonal = torch.einsum("btv,bvt->bt", text_from_vision, vision_from_text)
        vision_diagonal = torch.einsum("bvt,btv->bv", vision_from_text, text_from_vision)
        text_terms = -text_diagonal.clamp(1e-8, 1.0).log()
        if attention_mask is None:
            text_term = text_terms.mean()
        else:
            weights = attention_mask.to(text_terms.dtype)
            text_term = (text_terms * weights).sum() / weights.sum().clamp(min=1.0)
        total = total + (text_term + (-vision_diagonal.clamp(1e-8, 1.0).log()).mean()) / 2
    return total / len(text_attentions)


def masked_patch_loss(predictions: torch.Tensor, targets: torch.Tensor, mim_mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the features of the masked patches only; predictions/targets (B, P, d), mask (B, P).

    A mean over features as well as patches (the original sums over the d features), so the weight does not scale
    with the tower's width."""
    weights = mim_mask.to(predictions.dtype)[..., None]
    squared = (predictions - targets).pow(2) * weights
    return squared.sum() / (weights.sum() * predictions.shape[-1]).clamp(min=1.0)


def masked_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the tokens whose label is not -100 (0 when none is masked, instead of NaN)."""
    total = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100, reduction="sum")
    return total / (labels != -100).sum().clamp(min=1)


def mask_image_patches(pixel_values: torch.Tensor, mim_mask: torch.Tensor, patch_size) -> torch.Tensor:
    """Zero (the normalised mean colour) the pixels of every masked patch; mim_mask is (B, patches) in raster order."""
    ph, pw = tuple(patch_size) if isinstance(patch_size, (list, tuple)) else (patch_size, patch_size)
    batch, _, height, width = pixel_values.shape
    grid = (height // ph, width // pw)
    if tuple(mim_mask.shape) != (batch, grid[0] * grid[1]):
        raise ValueError(
            f"mim_mask has shape {tuple(mim_mask.shape)} but {height}x{width} images with {ph}x{pw} patches need "
            f"({batch}, {grid[0] * grid[1]}); build it with BridgeDataCollator(num_patches={grid[0] * grid[1]})."
        )
    pixel_mask = mim_mask.bool().view(batch, *grid).repeat_interleave(ph, 1).repeat_interleave(pw, 2)
    return pixel_values.masked_fill(pixel_mask[:, None], 0.0)


def max_across_ranks(value: int, device) -> int:
    """The largest `value` over all ranks (e.g. the longest local text length); `value` itself without
    torch.distributed. One host sync, only under torch.distributed."""
    _, world = distributed_rank_and_world()
    if world == 1:
        return value
    tensor = torch.tensor([value], device=device)
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
    return int(tensor.item())


@dataclass
class HardNegativeMiner:
    """The pre-training's negative mining, its strategy read from a `BridgeConfig` (`num_hard_negatives`,
    `num_hardest_negatives`, `negative_mining`, `itm_margin_min/max`): the one call site of `mine_hard_negatives`,
    for both directions (negative images per text anchor, negative texts per image anchor).

        miner = HardNegativeMiner.from_config(config, exclude=duplicates, generator=generator)
        negative_images, valid = miner(text_to_image_similarity, positive_index)
    """

    num_negatives: int
    margin_min: float
    margin_max: float
    semi_hard: bool
    num_hardest: int = 0
    exclude: torch.Tensor | None = None
    generator: torch.Generator | None = None

    @classmethod
    def from_config(cls, config, exclude=None, generator=None) -> "HardNegativeMiner":
        return cls(
            num_negatives=config.num_hard_negatives,
            margin_min=config.itm_margin_min,
            margin_max=config.itm_margin_max,
            semi_hard=config.negative_mining == "semi_hard",
            num_hardest=config.num_hardest_negatives,
            exclude=exclude,
            generator=generator,
        )

    def __call__(self, similarity: torch.Tensor, positive_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices (A, k), validity (A, k)) of each anchor's negatives, as `mine_hard_negatives` gives them."""
        return mine_hard_negatives(
            similarity,
            positive_index,
            self.num_negatives,
            self.margin_min,
            self.margin_max,
            self.exclude,
            semi_hard=self.semi_hard,
            generator=self.generator,
            num_hardest=self.num_hardest,
        )


def duplicate_texts(input_ids, attention_mask, all_input_ids, all_attention_mask) -> torch.Tensor:
    """(B, G) True where global text j is token-for-token the same caption as local text i: a pair that must
    never be used as a negative (common in small or synthetic caption sets)."""
    local = input_ids.masked_fill(attention_mask == 0, -1)
    every = all_input_ids.masked_fill(all_attention_mask == 0, -1)
    return (local[:, None, :] == every[None, :, :]).all(-1)


def fused_objective(
    bridge, config, vision, text, input_ids, attention_mask, targets, scale, output_attentions, generator=None
):
    """BRIDGE's fused pre-training terms, cross ITC and ITM on mined hard negatives (`HardNegativeMiner`), for
    `config.fused_objective` "pairwise" (every positive and negative pair through the interaction layers) or
    "aligned" (the original's: aligned pairs only). `bridge` is the `BridgeModel` (its `interact` and ITM head),
    `vision` / `text` its towers' outputs for the local batch, `targets` each row's index in the global batch,
    `scale` the contrastive logit scale, `generator` the mining's random order (None: torch's global generator).
    Returns (cross_itc, itm, itm_logits, itm_labels, the positives' interaction output, the text mask matching that
    output's attention maps). The states come from checked inputs (or checked cached states): `bridge._interact`,
    without `interact`'s value checks."""
    batch, k = input_ids.shape[0], config.num_hard_negatives
    length = max_across_ranks(input_ids.shape[1], input_ids.device)  # texts are padded per rank
    input_ids, attention_mask = pad_sequence_dim(input_ids, length), pad_sequence_dim(attention_mask, length)
    all_input_ids = gather_across_ranks(input_ids, with_grad=False)
    all_attention_mask = gather_across_ranks(attention_mask, with_grad=False)
    duplicates = duplicate_texts(input_ids, attention_mask, all_input_ids, all_attention_mask)
    miner = HardNegativeMiner.from_config(config, exclude=duplicates, generator=generator)
    all_image_embeds = gather_across_ranks(vision.pooler_output, with_grad=False)  # for mining only
    negative_images, valid_images = miner(text.pooler_output @ all_image_embeds.t(), targets)
    k = negative_images.shape[1]

    if config.fused_objective == "aligned":
        # The original's: interact aligned pairs only, contrast their fused embeddings across the batch, and
        # score ITM negatives by combining fused embeddings of two different aligned pairs.
        attention_mask = attention_mask[:, : text.last_hidden_state.shape[1]]  # local length again
        out = bridge._interact(
            vision.last_hidden_state,
            text.last_hidden_state,
            attention_mask,
            output_attentions=output_attentions,
            pair_chunk_size=batch,
        )
        all_cross_image = gather_across_ranks(out.cross_image_embeds)
        all_cross_text = gather_across_ranks(out.cross_text_embeds)
        cross_itc = (
            F.cross_entropy(scale * out.cross_image_embeds @ all_cross_text.t(), targets)
            + F.cross_entropy(scale * out.cross_text_embeds @ all_cross_image.t(), targets)
        ) / 2
        itm_logits = torch.cat(
            [
                out.itm_logits,
                bridge.itm_head(
                    all_cross_image[negative_images.flatten()], out.cross_text_embeds.repeat_interleave(k, 0)
                ),
            ]
        )
        negatives_valid = valid_images.flatten()
        itm = match_loss(itm_logits[:batch, 1], itm_logits[batch:, 1], negatives_valid)
    else:
        all_text_embeds = gather_across_ranks(text.pooler_output, with_grad=False)  # for mining only
        negative_texts, valid_texts = miner(vision.pooler_output @ all_text_embeds.t(), targets)
        # Every pair is run through the interaction stack for real: positives, (negative image, text anchor),
        # then (image anchor, negative text).
        anchors = targets.repeat_interleave(k)
        image_index = torch.cat([targets, negative_images.flatten(), anchors])
        text_index = torch.cat([targets, anchors, negative_texts.flatten()])
        all_vision_states = gather_across_ranks(vision.last_hidden_state)
        all_text_states = gather_across_ranks(pad_sequence_dim(text.last_hidden_state, length))
        # One pass over all pairs (layer 1's projections computed once per image / text inside).
        out = bridge._interact(
            all_vision_states,
            all_text_states,
            all_attention_mask,
            image_index,
            text_index,
            output_attentions=output_attentions,
            pair_chunk_size=image_index.numel(),
        )
        fused, itm_logits = out.fused_logits, out.itm_logits
        text_anchored = slice(batch, batch + batch * k)
        image_anchored = slice(batch + batch * k, None)
        cross_itc = (
            listwise_loss(fused[:batch], fused[image_anchored].view(batch, k), valid_texts)
            + listwise_loss(fused[:batch], fused[text_anchored].view(batch, k), valid_images)
        ) / 2
        negatives_valid = torch.cat([valid_images.flatten(), valid_texts.flatten()])
        itm = match_loss(itm_logits[:batch, 1], itm_logits[batch:, 1], negatives_valid)
        out = type(
            out
        )(  # the positives' part of the interaction output
            cross_image_embeds=out.cross_image_embeds[:batch],
            cross_text_embeds=out.cross_text_embeds[:batch],
            text_attentions=None if out.text_attentions is None else tuple(a[:batch] for a in out.text_attentions),
            vision_attentions=(
                None if out.vision_attentions is None else tuple(a[:batch] for a in out.vision_attentions)
            ),
        )
    itm_labels = torch.cat(
        [
            torch.ones(batch, dtype=torch.long, device=itm_logits.device),
            torch.where(negatives_valid, 0, -100),
        ]
    )
    return cross_itc, itm, itm_logits, itm_labels, out, attention_mask


def masked_objective(model, vision, text, inputs: dict):
    """One interaction pass on the masked inputs (masked text and/or masked image): MLM and MIM predictions and
    losses, for the terms `model.config` enables. `model` is a `BridgeForPreTraining` (its `bridge`, `mlm_head`,
    `mim_head`), `vision` / `text` its towers' outputs on the unmasked batch (the MIM targets), `inputs` the batch.
    Returns (mlm_loss, mim_loss, mlm_logits, mim_logits), None for a disabled term."""
    config, bridge = model.config, model.bridge
    use_mlm, use_mim = config.mlm_loss_weight > 0, config.mim_loss_weight > 0
    mlm_input_ids, mlm_labels = inputs.get("mlm_input_ids"), inputs.get("mlm_labels")
    pixel_values, mim_mask = inputs.get("pixel_values"), inputs.get("mim_mask")
    if use_mlm and (mlm_input_ids is None or mlm_labels is None):
        raise ValueError(
            "mlm_loss_weight > 0 needs `mlm_input_ids` and `mlm_labels`: build batches with "
            "BridgeDataCollator(mlm_probability=...) or set mlm_loss_weight=0."
        )
    if use_mim and pixel_values is None:
        raise ValueError(
            "mim_loss_weight > 0 needs pixel_values (MIM runs the vision tower on masked images), not only "
            "vision_hidden_state; pass the images or set mim_loss_weight=0."
        )
    if use_mim and mim_mask is None:
        raise ValueError(
            "mim_loss_weight > 0 needs `mim_mask`: build batches with "
            "BridgeDataCollator(mim_probability=..., num_patches=...) or set mim_loss_weight=0."
        )
    attention_mask = inputs["attention_mask"]
    text_states = text.last_hidden_state
    if use_mlm:
        text_states = bridge.get_text_features(
            mlm_input_ids, attention_mask, inputs.get("token_type_ids"), inputs.get("position_ids")
        ).last_hidden_state
    vision_states = vision.last_hidden_state
    if use_mim:
        patch = TowerGeometry(config.vision_config).mim_patch_size(
            tuple(pixel_values.shape[-2:]), config.num_vision_positions
        )
        vision_states = bridge.get_image_features(mask_image_patches(pixel_values, mim_mask, patch)).last_hidden_state
    out = bridge._interact(  # states of checked inputs
        vision_states,
        text_states,
        attention_mask,
        output_last_hidden_state=True,
        pair_chunk_size=vision_states.shape[0],
    )
    mlm_loss = mim_loss = mlm_logits = mim_logits = None
    if use_mlm:
        mlm_logits = model.mlm_head(out.text_last_hidden_state)
        mlm_loss = masked_token_loss(mlm_logits, mlm_labels)
    if use_mim:
        first_patch = config.num_vision_positions - mim_mask.shape[1]  # CLS / register tokens come first
        mim_logits = model.mim_head(out.vision_last_hidden_state[:, first_patch:])
        targets = vision.last_hidden_state[:, first_patch:].detach()
        mim_loss = masked_patch_loss(mim_logits, targets, mim_mask)
    return mlm_loss, mim_loss, mlm_logits, mim_logits


class BridgePreTrainingLoss:
    """BRIDGE's pre-training objective in one object, in the spirit of open_clip's `ClipLoss`: which terms run and
    their weights (the config's `*_loss_weight` fields, read at each call), the mining (`HardNegativeMiner`, chosen
    from the config), the pairs through the interaction (`fused_objective`), the masked pass (`masked_objective`),
    every term and the weighted sum.

        fields = BridgePreTrainingLoss(model.config, generator)(model, vision, text, inputs, ...)

    returns the `BridgeForPreTrainingOutput` fields it computes: `loss`, each enabled `<name>_loss`, the ITC parts,
    the ITM logits and labels, the positives' fused embeddings (and attention maps), the MLM / MIM logits. A new
    term is a weight field in the config, its name in `LOSS_NAMES`, and its computation here.
    """

    def __init__(self, config, generator: torch.Generator | None = None):
        self.config = config
        self.generator = generator  # the mining's random order (None: torch's global generator)

    def weights(self) -> dict:
        return {name: getattr(self.config, f"{name}_loss_weight") for name in LOSS_NAMES}

    def __call__(
        self, model, vision, text, inputs: dict, logits_per_image, logits_per_text, targets, scale, output_attentions
    ) -> dict:
        """`model` a `BridgeForPreTraining`, `vision` / `text` its towers' outputs (pooled embeddings as
        `pooler_output`), `inputs` the batch (`input_ids`, `attention_mask`, and the masked-pass inputs),
        `logits_per_image` / `logits_per_text` the unimodal scores against the global batch, `targets` each local
        row's index in the global batch, `scale` the contrastive logit scale."""
        config, weights = self.config, self.weights()
        losses, fields = {}, {}
        if weights["itc"] > 0 or weights["itm"] > 0 or weights["cycle"] > 0:
            cross_itc, itm, itm_logits, itm_labels, positives, padded_mask = fused_objective(
                model.bridge,
                config,
                vision,
                text,
                inputs["input_ids"],
                inputs["attention_mask"],
                targets,
                scale,
                weights["cycle"] > 0 or output_attentions,
                self.generator,
            )
            unimodal_itc = (F.cross_entropy(logits_per_image, targets) + F.cross_entropy(logits_per_text, targets)) / 2
            share = torch.sigmoid(model.itc_alpha())
            losses["itc"] = share * cross_itc + (1 - share) * unimodal_itc
            losses["itm"] = itm
            fields.update(
                unimodal_itc_loss=unimodal_itc,
                cross_itc_loss=cross_itc,
                itm_logits=itm_logits,
                itm_labels=itm_labels,
                cross_image_embeds=positives.cross_image_embeds,
                cross_text_embeds=positives.cross_text_embeds,
            )
            if output_attentions:
                fields.update(
                    interaction_text_attentions=positives.text_attentions,
                    interaction_vision_attentions=positives.vision_attentions,
                )
            if weights["cycle"] > 0:
                losses["cycle"] = cycle_consistency_loss(
                    positives.text_attentions, positives.vision_attentions, padded_mask
                )
        if weights["mlm"] > 0 or weights["mim"] > 0:
            mlm_loss, mim_loss, mlm_logits, mim_logits = masked_objective(model, vision, text, inputs)
            losses.update(mlm=mlm_loss, mim=mim_loss)
            fields.update(mlm_logits=mlm_logits, mim_logits=mim_logits)
        enabled = [weights[name] * value for name, value in losses.items() if value is not None and weights[name]]
        if not enabled:
            raise ValueError("Every *_loss_weight in the config is 0: enable at least one objective.")
        fields["loss"] = torch.stack(enabled).sum()
        fields.update({f"{name}_loss": value for name, value in losses.items() if weights[name]})
        return fields


__all__ = [
    "BridgePreTrainingLoss",
    "HardNegativeMiner",
    "masked_objective",
    "duplicate_texts",
    "fused_objective",
    "contrastive_loss",
    "cycle_consistency_loss",
    "distributed_rank_and_world",
    "gather_across_ranks",
    "listwise_loss",
    "mask_image_patches",
    "masked_patch_loss",
    "masked_token_loss",
    "match_loss",
    "max_across_ranks",
    "mine_hard_negatives",
    "pad_sequence_dim",
]
