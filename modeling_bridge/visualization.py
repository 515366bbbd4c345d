"""Pictures of a match: where each word of a text looks in an image (the interaction layers' text-to-image attention),
and the top-k results of a search with their scores. A bi-encoder has no such map: its text never sees the image.

Figures need matplotlib (`pip install matplotlib`, in the `[demo]` extra); `word_attention_maps` does not.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from .data.collator import num_patch_tokens
from .retrieval.search import _bridge_model
from .saving import write_file_atomically


@dataclass
class WordAttention:
    """Per text token (special and padding tokens left out), its attention over the image's patch grid."""

    tokens: list[str]
    maps: torch.Tensor  # (num_tokens, grid_height, grid_width); each map sums to the share not given to CLS tokens
    score: float  # the pair's fused score, logit_scale * <c_v, c_t>


@torch.no_grad()
def word_attention_maps(model, processor, image, text: str, layers: list[int] | None = None) -> WordAttention:
    """Run `image` with `text` through the interaction layers and return each word's attention over the image:
    text-queries-image probabilities, averaged over heads and the given interaction `layers` (default all), on the
    image's patch (or feature-map cell) grid. Attention to CLS / register tokens is dropped, so a map sums to the
    share the word gave to image regions."""
    bridge = _bridge_model(model)
    bridge.eval()
    inputs = processor(images=image, text=text, return_tensors="pt", truncation=True)
    text_inputs = {k: inputs[k] for k in ("attention_mask", "token_type_ids") if k in inputs}
    out = bridge.encode_and_interact(
        inputs["pixel_values"].to(bridge.device),
        inputs["input_ids"].to(bridge.device),
        **{k: v.to(bridge.device) for k, v in text_inputs.items()},
        output_attentions=True,
    )
    num_layers = len(out.text_attentions)
    layers = list(range(num_layers)) if layers is None else layers
    if not layers or any(not -num_layers <= layer < num_layers for layer in layers):
        raise ValueError(f"layers must name interaction layers among 0..{num_layers - 1}, got {layers}.")
    attention = torch.stack([out.text_attentions[layer][0] for layer in layers]).mean(dim=(0, 1))  # (Nt, Nv)
    patches = num_patch_tokens(bridge.config)
    side = math.isqrt(patches)
    if side * side != patches:
        raise ValueError(f"The vision tower's {patches} patch tokens do not form a square grid.")
    grid = attention[:, attention.shape[1] - patches :].float().cpu().view(-1, side, side)  # CLS / registers first
    ids = inputs["input_ids"][0].tolist()
    special = set(processor.tokenizer.all_special_ids)
    keep = [
        i
        for i, (token, on) in enumerate(zip(ids, inputs["attention_mask"][0].tolist()))
        if on and token not in special
    ]
    tokens = processor.tokenizer.convert_ids_to_tokens([ids[i] for i in keep])
    return WordAttention(tokens=tokens, maps=grid[keep], score=float(out.fused_logits[0]))


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only; never a window
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("Figures need matplotlib: pip install matplotlib (or modeling-bridge[demo]).") from error
    return plt


def _as_rgb(image):
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        image = Image.open(image)
    return image.convert("RGB")


def save_word_attention_figure(image, attention: WordAttention, path: str | os.PathLike, title: str | None = None):
    """The image, then one panel per word with its attention map over the image (bilinear upsampling), as a PNG."""
    plt = _pyplot()
    image = _as_rgb(image)
    panels = 1 + len(attention.tokens)
    figure, axes = plt.subplots(1, panels, figsize=(1.8 * panels, 2.2), squeeze=False)
    axes = axes[0]
    axes[0].imshow(image)
    axes[0].set_title(f"fused {attention.score:.2f}", fontsize=8)
    peak = float(attention.maps.max()) or 1.0
    for axis, token, heat in zip(axes[1:], attention.tokens, attention.maps):
        upsampled = torch.nn.functional.interpolate(
            heat[None, None], size=(image.height, image.width), mode="bilinear", align_corners=False
        )[0, 0]
        axis.imshow(image)
        axis.imshow(upsampled.numpy(), cmap="inferno", alpha=0.6, vmin=0.0, vmax=peak)
        axis.set_title(token, fontsize=9)
    for axis in axes:
        axis.axis("off")
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    write_file_atomically(path, lambda tmp: figure.savefig(tmp, dpi=100))
    plt.close(figure)


def save_search_figure(query, results: list, scores, path: str | os.PathLike, unimodal_scores=None, target=None):
    """A search's top-k as a PNG: for a text query, its title over the k images; for an image query, the image next
    to the k texts. Each result shows its score (and stage-1 unimodal score); `target` (the index into `results` of
    the true match, if any) is marked."""
    plt = _pyplot()
    scores = [float(s) for s in scores]
    unimodal = [None] * len(scores) if unimodal_scores is None else [float(s) for s in unimodal_scores]

    def label(i):
        text = f"#{i + 1}  {scores[i]:.2f}" + ("" if unimodal[i] is None else f" (uni {unimodal[i]:.2f})")
        return text + ("  <- match" if target == i else "")

    if isinstance(query, str):
        figure, axes = plt.subplots(1, len(results), figsize=(1.9 * len(results), 2.3), squeeze=False)
        for i, (axis, image) in enumerate(zip(axes[0], results)):
            axis.imshow(_as_rgb(image))
            axis.set_title(label(i), fontsize=7, color="green" if target == i else "black")
            axis.axis("off")
        figure.suptitle(f"query: {query}", fontsize=9)
    else:
        figure, (left, right) = plt.subplots(1, 2, figsize=(7, 0.35 * len(results) + 1.2), width_ratios=[1, 2.5])
        left.imshow(_as_rgb(query))
        left.set_title("query", fontsize=9)
        left.axis("off")
        right.axis("off")
        for i, text in enumerate(results):
            right.text(
                0.0, 1 - (i + 0.5) / len(results), f"{label(i)}   {text}", fontsize=8, va="center",
                color="green" if target == i else "black", transform=right.transAxes,
            )  # fmt: skip
    figure.tight_layout()
    write_file_atomically(path, lambda tmp: figure.savefig(tmp, dpi=100))
    plt.close(figure)


__all__ = ["WordAttention", "save_search_figure", "save_word_attention_figure", "word_attention_maps"]
