"""Conversion of checkpoints of the original BRIDGE research code (github.com/jfeinashley/BRIDGE) to BRIDGE (a
`BridgeForPreTraining`: the scoring `BridgeModel` under `bridge.` plus the pre-training heads the original holds).

Library code, not Hub code. The original model (`CrossModalVLM`) wraps a `ViTModel` and a `BertModel`
(`vision_encoder.vit.*`, `text_encoder.bert.*`, both built with their pooling layer, which its forward never uses),
then `cross_modal_config.num_layers` interaction layers and the heads. What the mapping relies on, read from the
original code:

- temperatures: `tau = softplus(tau_*_param)` per direction, scores = `cos(q, k) / tau + bias`, no 1/sqrt(d): the
  parameter maps as-is to our `temperature.value`;
- gates: `sigmoid(gate_*_bias)`, mapped as-is to `text_gate.value` / `vision_gate.value`;
- positional biases: created on the first forward as (Nt x Nv) and (Nv x Nt) matrices for the text length of that
  batch; they go into the top-left corner of our (max_text_positions x Nv) / (Nv x max_text_positions) tables;
- cross embeddings pool the `Z` that the last layer computed from its *input* (`cross_embed_source="layer_input"`);
- dropout: on the attention probabilities and after the output projection (as ours); the ITM head is
  Linear -> ReLU -> Dropout -> Linear on `[c_t ; c_v ; <c_t, c_v>]` with index 1 = "match";
- `logit_scale` enters as `exp(logit_scale)`, `itc_alpha` as `sigmoid(itc_alpha)`.

The original masks padded text in neither attention direction, so converted models reproduce it on unpadded text.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoImageProcessor, AutoTokenizer, BertConfig, ViTConfig

from .configuration_bridge import BridgeConfig, is_local_only_path
from .modeling_bridge import BridgeForPreTraining
from .processing_bridge import BridgeProcessor


class ConversionError(ValueError):
    """The checkpoint or its config cannot be converted; the message says what is wrong and what to do."""


# Original name -> ours, for everything but the towers. `{i}` is an interaction layer index.
_LAYER_RENAMES = {
    "vision_norm": "vision_norm",
    "text_norm": "text_norm",
    "vision_to_shared": "vision_to_shared",
    "text_to_shared": "text_to_shared",
    "Q_text": "text_attention.q_proj",
    "K_vision_to_text": "text_attention.k_proj",
    "V_vision_to_text": "text_attention.v_proj",
    "O_text": "text_attention.o_proj",
    "Q_vision": "vision_attention.q_proj",
    "K_text_to_vision": "vision_attention.k_proj",
    "V_text_to_vision": "vision_attention.v_proj",
    "O_vision": "vision_attention.o_proj",
    "shared_to_text": "shared_to_text",
    "shared_to_vision": "shared_to_vision",
}
_LAYER_SCALARS = {
    "tau_text_param": "text_attention.temperature.value",
    "tau_vision_param": "vision_attention.temperature.value",
    "gate_text_bias": "text_gate.value",
    "gate_vision_bias": "vision_gate.value",
    "bias_text_from_vision": "text_attention.position_bias",
    "bias_vision_from_text": "vision_attention.position_bias",
}
_TOP_RENAMES = {
    "vision_pool_proj_cross": "vision_cross_projection",
    "text_pool_proj_cross": "text_cross_projection",
    "vision_pool_proj_uni": "vision_unimodal_projection",
    "text_pool_proj_uni": "text_unimodal_projection",
    "mlm_head.0": "mlm_head.dense",
    "mlm_head.1": "mlm_head.layer_norm",
    "mlm_head.3": "mlm_head.decoder",
    "mim_head.0": "mim_head.dense",
    "mim_head.1": "mim_head.layer_norm",
    "mim_head.3": "mim_head.decoder",
    "itm_head.0": "itm_head.dense",
    "itm_head.3": "itm_head.classifier",
}
_TOWER_PREFIXES = {"vision_encoder.vit.": "vision_model.", "text_encoder.bert.": "text_model."}
# Keys the original holds but that never affect its outputs: the towers' pooling layers (built by
# `ViTModel/BertModel.from_pretrained`, never called) and position/token-type id buffers of older transformers.
_UNUSED = re.compile(
    r"^(vision_encoder\.vit|text_encoder\.bert)\.(pooler\..*|embeddings\.(position_ids|token_type_ids))$"
)
# Modules of the original that BridgeModel does not have.
_UNSUPPORTED = {
    "vision_encoder.projection.": "a Linear from the vision tower's hidden size to `vision_config.hidden_dim`",
    "text_encoder.projection.": "a Linear from the text tower's hidden size to `text_config.hidden_dim`",
    "caption_decoder.": "the optional caption decoder (`use_caption_decoder: true`)",
}


def original_to_bridge_key(key: str) -> str | None:
    """Our (on-disk) name for an original key, or None when the key is not part of the original's schema."""
    for prefix, ours in _TOWER_PREFIXES.items():
        if key.startswith(prefix):
            return ours + key[len(prefix) :]
    match = re.fullmatch(r"interaction_layers\.(\d+)\.(\w+)(\.(?:weight|bias))?", key)
    if match:
        index, name, suffix = match.group(1), match.group(2), match.group(3) or ""
        if suffix and name in _LAYER_RENAMES:
            return f"interaction_layers.{index}.{_LAYER_RENAMES[name]}{suffix}"
        if not suffix and name in _LAYER_SCALARS:
            return f"interaction_layers.{index}.{_LAYER_SCALARS[name]}"
        return None
    if key in ("logit_scale", "itc_alpha"):
        return f"{key}.value"
    module, _, suffix = key.rpartition(".")
    if suffix in ("weight", "bias") and module in _TOP_RENAMES:
        return f"{_TOP_RENAMES[module]}.{suffix}"
    return None


# The inverse of the tables above, built once: messages about a checkpoint must use the names the user's file has.
_REVERSE_LAYER = {
    **{
        f"{ours}.{suffix}": f"{original}.{suffix}"
        for original, ours in _LAYER_RENAMES.items()
        for suffix in ("weight", "bias")
    },
    **{ours: original for original, ours in _LAYER_SCALARS.items()},
}
_REVERSE_TOP = {
    **{
        f"{ours}.{suffix}": f"{original}.{suffix}"
        for original, ours in _TOP_RENAMES.items()
        for suffix in ("weight", "bias")
    },
    "logit_scale.value": "logit_scale",
    "itc_alpha.value": "itc_alpha",
}


def bridge_to_original_key(key: str) -> str | None:
    """The original's name for one of our (on-disk or in-memory) keys: the inverse of `original_to_bridge_key`;
    None for a key the original has no counterpart of."""
    for prefix, ours in _TOWER_PREFIXES.items():
        if key.startswith(ours):
            return prefix + key[len(ours) :]
    match = re.fullmatch(r"interaction_layers\.(\d+)\.(.+)", key)
    if match:
        original = _REVERSE_LAYER.get(match.group(2))
        return None if original is None else f"interaction_layers.{match.group(1)}.{original}"
    return _REVERSE_TOP.get(key)


# ----------------------------------------------------------------------------------------------------------------
# Reading the checkpoint and the YAML
# ----------------------------------------------------------------------------------------------------------------


def load_original_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict | None]:
    """(state_dict, embedded config or None) from a `.pth` holding `{'model': sd, 'config': ...}`, a trainer
    checkpoint (`model_state_dict`) or a bare state dict. Read with `weights_only=True`: no code runs."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint {path} is a folder; pass the .pth file the original code saved.")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise _unreadable_checkpoint(path, error) from error
    if not isinstance(obj, dict):
        raise ConversionError(f"{path} holds a {type(obj).__name__}, not a state dict or a dict with 'model'.")
    config = obj.get("config") if isinstance(obj.get("config"), dict) else None
    for key in ("model", "model_state_dict", "state_dict"):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    state_dict = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state_dict:
        raise ConversionError(f"{path} holds no tensors under 'model', 'model_state_dict' or at its top level.")
    if all(k.startswith("module.") for k in state_dict):  # saved from a DistributedDataParallel wrapper
        state_dict = {k[len("module.") :]: v for k, v in state_dict.items()}
    return state_dict, config


def _unreadable_checkpoint(path: Path, error: Exception) -> ConversionError:
    """Why torch.load(weights_only=True) failed, for the user: a sound file that pickles Python objects besides
    tensors (it names the first one; the way out is a re-saved state dict, never loading untrusted pickles), or a
    file that is no readable checkpoint at all (truncated, damaged, or something else)."""
    unsupported = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
    if unsupported:
        return ConversionError(
            f"{path} holds Python objects besides tensors (first: {unsupported.group(1)}), which the converter does "
            "not unpickle because unpickling can run code. In an environment where you trust the file, re-save its "
            "state dict with torch.save(state_dict, 'model.pth') (the model's `state_dict()` or the checkpoint's "
            "'model' entry) and convert that file."
        )
    with open(path, "rb") as f:
        head = f.read(512)
    if not head:
        what = "it is empty"
    elif head.startswith(b"PK\x03\x04"):
        what = "its zip archive is incomplete or damaged (e.g. a truncated download or copy)"
    elif head.startswith(b"\x80"):
        what = "its pickle data is incomplete or damaged (e.g. a truncated download or copy)"
    else:
        what = "it is not a file written by torch.save"
    return ConversionError(
        f"{path} is not a readable PyTorch checkpoint: {what} ({type(error).__name__} in torch.load). Download or "
        "copy the checkpoint again, or re-save its state dict with torch.save(state_dict, 'model.pth') where it was "
        "trained."
    )


def load_original_config(path: str | os.PathLike) -> dict:
    """The original YAML config as a dict, with `model_name` entries that are relative paths resolved against the
    YAML's folder."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config {path} not found.")
    try:
        with open(path, encoding="utf-8") as f:
            config = yaml.safe_load(f)
    except (yaml.YAMLError, UnicodeDecodeError) as error:  # YAMLError is no ValueError: it would be a traceback
        where = getattr(error, "problem_mark", None)
        at = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
        raise ConversionError(
            f"{path} is not valid YAML{at}; pass the training config (configs/*.yaml of the original code) as "
            "--config and the .pth as --checkpoint."
        ) from error
    if not isinstance(config, dict):
        raise ConversionError(f"{path} is not a YAML mapping in the schema of the original configs/*.yaml.")
    for section in ("vision_config", "text_config"):
        name = (config.get(section) or {}).get("model_name")
        if isinstance(name, str):
            config[section]["model_name"] = _resolve_model_name(name, path.parent)
    return config


def _resolve_model_name(name: str, base: Path) -> str:
    """`./x` and `../x` are relative to the YAML; another relative name is a local folder there if one exists, and a
    Hub id otherwise."""
    candidate = base / name
    if name.startswith(("./", "../", ".\\", "..\\")) or candidate.exists():
        return str(candidate.resolve())
    return name


def _require(config: dict, section: str, key: str, source: str):
    value = (config.get(section) or {}).get(key)
    if value is None:
        raise ConversionError(f"{source} has no `{section}.{key}` (the original code requires it); add it.")
    return value


@dataclass
class OriginalConfig:
    """The parts of an original config that decide the architecture."""

    vision_source: str
    text_source: str
    bridge_fields: dict
    vision_hidden_dim: int | None
    text_hidden_dim: int | None
    base_models: list[str] = field(default_factory=list)


def parse_original_config(
    config: dict, source: str, vision_model: str | None = None, text_model: str | None = None
) -> OriginalConfig:
    """Translate the original schema (`vision_config`, `text_config`, `cross_modal_config`, `pooling_config`) to
    BridgeConfig fields, with the original's defaults for omitted entries."""
    names = {}
    for section, override in (("vision_config", vision_model), ("text_config", text_model)):
        names[section] = (config.get(section) or {}).get("model_name")
        if override is None and not names[section]:
            flag = "--vision_model" if section == "vision_config" else "--text_model"
            raise ConversionError(f"{source} has no `{section}.model_name`; add it or pass {flag} NAME_OR_DIR.")
    cross = config.get("cross_modal_config") or {}
    # Every training and evaluation script of the original passes `config['pooling_config']` to the model (a
    # KeyError without it); the model then defaults `type` to "mean" and `projection_dim` to 256, as we do.
    pooling = config.get("pooling_config")
    if not isinstance(pooling, dict):
        problem = "has no `pooling_config` section" if pooling is None else "has a `pooling_config` that is no mapping"
        raise ConversionError(
            f"{source} {problem} (the original code requires it); add the one the checkpoint was trained with, e.g. "
            "`pooling_config: {type: mean, projection_dim: 256}`."
        )
    if cross.get("use_caption_decoder"):
        raise ConversionError(f"{source} enables `use_caption_decoder`; BridgeModel has no caption decoder.")
    fields = dict(
        num_interaction_layers=_require(config, "cross_modal_config", "num_layers", source),
        shared_dim=_require(config, "cross_modal_config", "shared_dim", source),
        num_interaction_heads=_require(config, "cross_modal_config", "num_heads", source),
        interaction_dropout=cross.get("dropout", 0.1),
        attention_dropout=cross.get("attention_dropout", 0.1),
        use_positional_bias=cross.get("use_positional_bias", True),
        init_temperature=cross.get("init_temperature", 1.0),
        init_gate_bias=cross.get("init_gate_bias", -2.2),
        pooling=pooling.get("type", "mean"),
        projection_dim=pooling.get("projection_dim", 256),
        itm_dropout=0.1,  # fixed in the original's ITM head
        cross_embed_source="layer_input",  # the original pools the last layer's input projection
    )
    hub_ids = [n for n in names.values() if isinstance(n, str) and not os.path.isabs(n)]
    sources = {}
    for section, override, flag in (
        ("vision_config", vision_model, "--vision_model"),
        ("text_config", text_model, "--text_model"),
    ):
        if override is not None:
            sources[section] = check_model_source(override, flag)
        else:
            sources[section] = check_model_source(
                names[section], f"`{section}.model_name` in {source}", f"fix it there or pass {flag} DIR"
            )
    return OriginalConfig(
        vision_source=sources["vision_config"],
        text_source=sources["text_config"],
        bridge_fields=fields,
        vision_hidden_dim=(config.get("vision_config") or {}).get("hidden_dim"),
        text_hidden_dim=(config.get("text_config") or {}).get("hidden_dim"),
        base_models=hub_ids,
    )


# One rule for "can only be a local path" across the package (huggingface_hub's repo-id check).
looks_like_local_path = is_local_only_path


def check_model_source(name: str, label: str, fix: str = "check the path") -> str:
    """`name` as transformers should get it: an existing local folder (with `~` expanded), or a Hub id. A name that
    can only be a path but is no model folder is an error naming it, instead of transformers' 'Repo id must be in
    the form ...'."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{label}: the folder {path} holds no config.json, so it is not a saved model; "
                f"{fix} (the folder that save_pretrained wrote, or a Hub id)."
            )
        return str(path)
    if path.exists():
        raise NotADirectoryError(
            f"{label}: {path} is a file, not a model folder (with config.json) or a Hub id; {fix}."
        )
    if looks_like_local_path(name):
        raise FileNotFoundError(
            f"{label}: the folder {path} does not exist (a local path, not a Hub id, which is "
            f"'name' or 'namespace/name'); {fix}."
        )
    return name


def _tower_config(config_class, source: str, flag: str):
    # The original always builds `ViTModel.from_pretrained(name)` / `BertModel.from_pretrained(name)`, i.e. a ViT /
    # BERT architecture with that checkpoint's config values, whatever its model_type: so do we.
    try:
        return config_class.from_pretrained(source)
    except Exception as error:
        raise ConversionError(
            f"cannot read the tower config of {source!r} ({type(error).__name__}); pass {flag} with a local folder "
            "holding its config.json (and tokenizer / image processor)."
        ) from error


def _optional(loader, source: str, what: str):
    try:
        return loader(source)
    except Exception as error:
        print(f"note: no {what} found at {source!r} ({type(error).__name__}); the output will have no processor.")
        return None


# ----------------------------------------------------------------------------------------------------------------
# Conversion
# ----------------------------------------------------------------------------------------------------------------


# The converted checkpoint is a BridgeForPreTraining (the original holds the pre-training heads too): BridgeModel's
# weights under `bridge.`, these at the top. Names below are "flat" (without `bridge.`), as the mapping tables write.
_PRETRAINING_ONLY = ("mlm_head.", "mim_head.", "itc_alpha.")


def _flat(key: str) -> str:
    return key.removeprefix("bridge.")


def _checkpoint_key(flat_key: str) -> str:
    return flat_key if flat_key.startswith(_PRETRAINING_ONLY) else f"bridge.{flat_key}"


def _expected_checkpoint_tensors(config: BridgeConfig) -> dict[str, torch.Size]:
    """Flat on-disk names and shapes of a BridgeForPreTraining with this config (what `save_pretrained` would
    write), found by building it on the meta device: the towers' names are whatever transformers writes for them."""
    from transformers.core_model_loading import revert_weight_conversion

    with torch.device("meta"):
        model = BridgeForPreTraining(config)
    return {_flat(k): v.shape for k, v in revert_weight_conversion(model, model.state_dict()).items()}


def _in_memory_tensors(config: BridgeConfig) -> dict[str, torch.Size]:
    with torch.device("meta"):
        model = BridgeForPreTraining(config)
    return {_flat(k): v.shape for k, v in model.state_dict().items()}


def map_original_state_dict(state_dict: dict[str, torch.Tensor], config: BridgeConfig) -> dict[str, torch.Tensor]:
    """The original state dict in BridgeModel's on-disk names; raises ConversionError listing every unknown, missing
    or mis-shaped key."""
    unsupported = {prefix: sorted(k for k in state_dict if k.startswith(prefix)) for prefix in _UNSUPPORTED}
    unsupported = {p: keys for p, keys in unsupported.items() if keys}
    if unsupported:
        details = "; ".join(f"{_UNSUPPORTED[p]}: {keys}" for p, keys in unsupported.items())
        raise ConversionError(
            f"the checkpoint uses modules that BridgeModel does not have: {details}. The tower projections exist "
            "only when the YAML's hidden_dim differs from the tower's hidden size; BRIDGE models built here attend "
            "from the towers' own widths, so such checkpoints cannot be converted."
        )
    expected = _expected_checkpoint_tensors(config)
    in_memory = _in_memory_tensors(config)
    mapped, unknown, origin = {}, [], {}
    for key, tensor in state_dict.items():
        if _UNUSED.match(key):
            continue
        ours = original_to_bridge_key(key)
        if ours is None:
            unknown.append(key)
            continue
        mapped[ours], origin[ours] = tensor, key
    # Towers saved under transformers v5 carry in-memory names; either naming is accepted, per tower.
    for tower in ("vision_model.", "text_model."):
        keys = {k for k in mapped if k.startswith(tower)}
        disk = {k for k in expected if k.startswith(tower)}
        memory = {k for k in in_memory if k.startswith(tower)}
        if keys and len(keys & memory) > len(keys & disk):
            expected = {k: v for k, v in expected.items() if not k.startswith(tower)}
            expected.update({k: v for k, v in in_memory.items() if k.startswith(tower)})
    _check_projection_dim(mapped, expected, origin, config)
    unknown += sorted(origin[k] for k in mapped if k not in expected)
    # In the original's names, so that the user can look for them in the checkpoint.
    missing = sorted(bridge_to_original_key(k) or f"{k} (BridgeModel only)" for k in expected if k not in mapped)
    bias_keys = {k for k in expected if k.endswith("position_bias")}
    wrong_shape = sorted(
        f"{origin[k]} {tuple(mapped[k].shape)} (expected {tuple(expected[k])})"
        for k in mapped
        if k in expected and k not in bias_keys and mapped[k].shape != expected[k]
    )
    if unknown or missing or wrong_shape:
        raise ConversionError(
            f"the checkpoint does not match the original architecture described by the config "
            f"(num_layers={config.num_interaction_layers}, shared_dim={config.shared_dim}, towers "
            f"{config.vision_config.model_type}/{config.text_config.model_type}). "
            f"Unknown keys: {sorted(unknown) or 'none'}. Missing keys: {missing or 'none'}. "
            f"Wrong shapes: {wrong_shape or 'none'}. Check that --config (and --vision_model / --text_model) are the "
            "ones the checkpoint was trained with."
        )
    for key in bias_keys:
        mapped[key] = _place_position_bias(mapped[key], tuple(expected[key]), origin[key])
    return {k: v.contiguous().clone() for k, v in mapped.items()}


_PROJECTIONS = (
    "vision_unimodal_projection.weight",
    "text_unimodal_projection.weight",
    "vision_cross_projection.weight",
    "text_cross_projection.weight",
)


def _check_projection_dim(mapped: dict, expected: dict, origin: dict, config: BridgeConfig) -> None:
    """A projection_dim that differs from the checkpoint's shows up in six tensors (four projections, the ITM head);
    name its cause, the YAML entry, instead of listing the shapes."""
    found = {origin[k]: mapped[k].shape[0] for k in _PROJECTIONS if k in mapped and mapped[k].dim() == 2}
    sizes = set(found.values())
    if (
        len(sizes) == 1
        and config.projection_dim not in sizes
        and all(mapped[k].shape[1] == expected[k][1] for k in _PROJECTIONS if k in mapped and k in expected)
    ):
        size = sizes.pop()
        default = (
            " (the original's default when pooling_config does not set it)" if config.projection_dim == 256 else ""
        )
        raise ConversionError(
            f"pooling_config.projection_dim={config.projection_dim}{default} but the checkpoint's projections have "
            f"{size} ({', '.join(sorted(found))}); set `projection_dim: {size}` under pooling_config in the YAML the "
            "checkpoint was trained with."
        )


def _place_position_bias(bias: torch.Tensor, table_shape: tuple[int, int], name: str) -> torch.Tensor:
    """The original's (text_len x Nv) or (Nv x text_len) bias in the top-left corner of our zero table."""
    if bias.dim() != 2:
        raise ConversionError(f"{name} has shape {tuple(bias.shape)}; the original's positional biases are matrices.")
    vision_axis = 1 if "text_from_vision" in name else 0
    if bias.shape[vision_axis] != table_shape[vision_axis]:
        raise ConversionError(
            f"{name} covers {bias.shape[vision_axis]} vision tokens but the vision tower emits "
            f"{table_shape[vision_axis]}; the tower config does not match the checkpoint."
        )
    if any(b > t for b, t in zip(bias.shape, table_shape)):
        raise ConversionError(
            f"{name} has shape {tuple(bias.shape)}, which does not fit the ({table_shape[0]} x {table_shape[1]}) "
            "positional-bias table; the text length it was trained with exceeds "
            "max_text_positions (the text tower's limit)."
        )
    table = torch.zeros(table_shape, dtype=bias.dtype)
    table[: bias.shape[0], : bias.shape[1]] = bias
    return table


def build_config(parsed: OriginalConfig) -> BridgeConfig:
    """BridgeConfig of the converted model: ViT / BERT towers from the named configs, interaction fields from the
    YAML. The text-position table keeps its default size (the text tower's limit, at most 512); the original's bias,
    fixed to its training text length, fills its top-left corner."""
    vision = _tower_config(ViTConfig, parsed.vision_source, "--vision_model")
    text = _tower_config(BertConfig, parsed.text_source, "--text_model")
    for name, tower, hidden_dim in (
        ("vision", vision, parsed.vision_hidden_dim),
        ("text", text, parsed.text_hidden_dim),
    ):
        if hidden_dim is not None and hidden_dim != tower.hidden_size:
            raise ConversionError(
                f"{name}_config.hidden_dim={hidden_dim} differs from the {name} tower's hidden_size="
                f"{tower.hidden_size}: the original then adds `{name}_encoder.projection` (a Linear between the two), "
                "which BridgeModel does not have, so this checkpoint cannot be converted."
            )
    try:
        return BridgeConfig.from_vision_text_configs(vision, text, **parsed.bridge_fields)
    except ValueError as error:
        raise ConversionError(f"the config does not give a valid BridgeConfig: {error}") from error


def convert_original_checkpoint(
    checkpoint: str | os.PathLike,
    config_path: str | os.PathLike | None = None,
    vision_model: str | None = None,
    text_model: str | None = None,
) -> tuple[BridgeForPreTraining, BridgeProcessor | None, OriginalConfig]:
    """Load an original checkpoint as a BridgeForPreTraining (eval mode; `.bridge` is the BridgeModel that scores,
    and `AutoModel` reads a saved one as such), with the towers' processor when one is found.

    `config_path` is the training YAML; without it, the config stored in the checkpoint is used. `vision_model` /
    `text_model` replace the YAML's `model_name` entries (for the tower configs and the processor only: all weights
    come from the checkpoint).
    """
    parsed = None
    if config_path is not None:  # a bad YAML or tower path is reported before a large checkpoint is read
        parsed = parse_original_config(load_original_config(config_path), str(config_path), vision_model, text_model)
    state_dict, embedded = load_original_checkpoint(checkpoint)
    if parsed is None:
        if embedded is None:
            raise ConversionError(f"{checkpoint} stores no config; pass --config with its training YAML.")
        parsed = parse_original_config(embedded, f"the config stored in {checkpoint}", vision_model, text_model)
    config = build_config(parsed)
    weights = map_original_state_dict(state_dict, config)
    staging = Path(tempfile.mkdtemp(prefix="bridge-convert-"))
    try:
        # Loading through from_pretrained lets transformers translate the towers' on-disk names to its in-memory ones.
        config.save_pretrained(staging)
        weights = {_checkpoint_key(k): v for k, v in weights.items()}
        save_file(weights, staging / "model.safetensors", metadata={"format": "pt"})
        del weights
        model, info = BridgeForPreTraining.from_pretrained(staging, output_loading_info=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    problems = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if problems:
        raise ConversionError(f"the mapped weights did not load cleanly into BridgeForPreTraining: {problems}")
    image_processor = _optional(AutoImageProcessor.from_pretrained, parsed.vision_source, "image processor")
    tokenizer = _optional(AutoTokenizer.from_pretrained, parsed.text_source, "tokenizer")
    processor = None
    if image_processor is not None and tokenizer is not None:
        processor = BridgeProcessor(image_processor=image_processor, tokenizer=tokenizer)
    return model.eval(), processor, parsed


__all__ = [
    "ConversionError",
    "OriginalConfig",
    "bridge_to_original_key",
    "build_config",
    "check_model_source",
    "convert_original_checkpoint",
    "load_original_checkpoint",
    "load_original_config",
    "looks_like_local_path",
    "map_original_state_dict",
    "original_to_bridge_key",
    "parse_original_config",
]
