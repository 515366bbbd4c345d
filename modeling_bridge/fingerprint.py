"""Identity of what a cache's content depends on (tower states, gallery embeddings): a model's weights, a tokenizer."""

import hashlib
import json

import torch


def weights_fingerprint(**modules: torch.nn.Module) -> str:
    """sha256 of the named modules' parameters and buffers (names, dtypes, shapes, bytes)."""
    digest = hashlib.sha256()
    for prefix, module in sorted(modules.items()):
        for name, tensor in sorted(module.state_dict().items()):
            tensor = tensor.detach().cpu().contiguous()
            digest.update(f"{prefix}.{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of what a tokenizer's ids depend on: its vocabulary, normalisation (e.g. lower-casing), pre-tokenizer
    and special tokens. The fast backend's serialised state, without the truncation / padding settings that each
    call sets; for a tokenizer without one, its vocabulary and settings."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        state.pop("truncation", None)
        state.pop("padding", None)
    else:
        state = sorted(tokenizer.get_vocab().items())
    settings = [
        type(tokenizer).__name__,
        tokenizer.special_tokens_map,
        getattr(tokenizer, "padding_side", None),
        getattr(tokenizer, "truncation_side", None),
        getattr(tokenizer, "do_lower_case", None),
    ]
    return hashlib.sha256(json.dumps([state, settings], sort_keys=True, default=str).encode()).hexdigest()


__all__ = ["tokenizer_fingerprint", "weights_fingerprint"]
