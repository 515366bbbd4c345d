"""Identity of a model's weights, for caches that must not outlive them (tower states, gallery embeddings)."""

import hashlib

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


__all__ = ["weights_fingerprint"]
