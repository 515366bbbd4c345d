"""Loading BRIDGE safely: saved models whose weights must match their config, and pretrained towers.

Hub code: imports only transformers (and safetensors, its dependency), `.configuration_bridge` and `.towers_bridge`;
saved next to the weights with `modeling_bridge.py`, which imports it relatively.
"""

import logging as pylogging
import os

import torch
from transformers import AutoConfig, PreTrainedModel
from transformers.utils import logging

from .configuration_bridge import check_local_path
from .towers_bridge import TowerGeometry


logger = logging.get_logger(__name__)


def load_checked(load, pretrained_model_name_or_path, *args, **kwargs):
    """`load(path, ...)` (a model class's `PreTrainedModel.from_pretrained`) with three checks: a missing local folder
    is named as such; a damaged (e.g. half-written) safetensors file is named; and weights that miss or add
    interaction-layer (or other BRIDGE) parameters are an error naming them, not a silent random initialisation. A
    caller who passes `output_loading_info=True` gets the loading info instead of that error (with a warning)."""
    check_local_path(pretrained_model_name_or_path, "model folder")
    wants_info = kwargs.pop("output_loading_info", False)
    try:
        model, info = load(pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs)
    except Exception as error:
        damaged = damaged_safetensors_files(pretrained_model_name_or_path)
        if damaged:
            raise OSError(
                f"Cannot load {pretrained_model_name_or_path}: {'; '.join(damaged)}. The file is damaged, e.g. "
                "by a save that was interrupted; restore it or save the model again (modeling_bridge.saving."
                "save_pretrained_atomically never leaves a half-written folder)."
            ) from error
        raise
    bridge = getattr(model, model.base_model_prefix, model)
    prefix = "" if bridge is model else f"{model.base_model_prefix}."
    # BridgeModel's parts only: pre-training heads missing from a BridgeModel folder are new, as in any XForY
    core = tuple(f"{prefix}{name}." for name, _ in bridge.named_children())
    missing = sorted(k for k in info.get("missing_keys", ()) if k.startswith(core))
    unexpected = sorted(k for k in info.get("unexpected_keys", ()) if "interaction_layers." in k)
    if missing or unexpected:
        message = (
            f"The weights in {pretrained_model_name_or_path} do not match its BridgeConfig "
            f"(num_interaction_layers={model.config.num_interaction_layers}, "
            f"shared_dim={model.config.shared_dim})."
            f" Missing keys: {missing or 'none'}. Unexpected keys: {unexpected or 'none'}."
        )
        if not wants_info:
            raise ValueError(
                f"{message} Fix config.json to describe the saved model, or re-save / re-convert the checkpoint."
            )
        logger.warning(f"{message} The missing parameters are randomly initialised.")
    return (model, info) if wants_info else model


def load_pretrained_tower(name_or_path: str, part: str) -> PreTrainedModel:
    """The encoder at `name_or_path`; for a dual-encoder checkpoint (no `hidden_size` of its own, e.g. `clip`), the
    tower described by its `part` (`"vision_config"` / `"text_config"`), read from the same weights file.

    Weights BRIDGE leaves out on purpose (the tower's pooling layer; the other half of a dual encoder) are not
    reported: transformers' load report is silenced for this call and any other unexpected key is warned about
    here instead."""
    check_local_path(name_or_path, f"{part.split('_')[0]} tower folder")
    config = AutoConfig.from_pretrained(name_or_path)
    whole = config
    if getattr(config, "hidden_size", None) is None and getattr(config, part, None) is not None:
        config = getattr(config, part)
    report_logger = logging.get_logger("transformers.modeling_utils")
    report_filter = _DropLoadReport()
    report_logger.addFilter(report_filter)
    try:  # BRIDGE pools on its own; towers that have a pooling layer are loaded without it (as in __init__)
        tower, info = TowerGeometry(config).from_pretrained(
            name_or_path, dtype=torch.float32, output_loading_info=True
        )
    finally:
        report_logger.removeFilter(report_filter)
    if info.get("missing_keys"):
        raise ValueError(
            f"{name_or_path} lacks weights of its {config.model_type!r} tower: {sorted(info['missing_keys'])}; "
            "point to a folder or repo that holds the pretrained encoder."
        )
    unexpected = sorted(k for k in info.get("unexpected_keys", ()) if not k.startswith("pooler."))
    if unexpected and whole is config:
        logger.warning(f"{name_or_path}: weights not used by the {config.model_type!r} tower: {unexpected}.")
    return tower


class _DropLoadReport(pylogging.Filter):
    """Drops transformers' per-load key report (a filter, not a level change: the loader's behaviour depends on its
    logger's level)."""

    def filter(self, record) -> bool:
        return "LOAD REPORT" not in record.getMessage()


def damaged_safetensors_files(folder) -> list[str]:
    """'file: reason' for each safetensors file in a local `folder` whose header cannot be read (truncated, not
    safetensors); empty for a Hub id or a healthy folder."""
    if not isinstance(folder, (str, os.PathLike)) or not os.path.isdir(folder):
        return []
    from safetensors import safe_open  # a transformers dependency

    damaged = []
    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors"):
            path = os.path.join(folder, name)
            try:
                with safe_open(path, framework="pt") as weights:  # opening parses and checks the header
                    weights.keys()
            except Exception as error:
                damaged.append(f"{path}: {error}")
    return damaged


__all__ = ["damaged_safetensors_files", "load_checked", "load_pretrained_tower"]
