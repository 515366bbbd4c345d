"""PEFT LoRA for BRIDGE: tower-aware default targets, a one-call wrapper, and a checked adapter reload.

Why not PEFT's defaults: model_type "bridge" has no entry in PEFT's target table, `"all-linear"` also adapts the
heads and projections, and a fixed list such as `["query", "value"]` silently misses a transformers-v5 ViT (whose
attention linears are `q_proj/k_proj/v_proj` in memory) while `["q_proj", "v_proj"]` misses BERT
(`query/key/value`). So the targets are read off the actual model: every module is named explicitly.

Why a checked reload (`load_lora_adapter`): `PeftModel.from_pretrained` loads adapter weights with
`load_state_dict(strict=False)` and throws the load result's `unexpected_keys` away without a warning, so an adapter
trained on a BRIDGE with 2 interaction layers loads onto a 1-layer base with layer 1's LoRA matrices and scalars
silently dropped. (It warns only about adapter weights missing from the file; the reverse case, a 1-layer adapter on
a 2-layer base, fails with a bare KeyError when `modules_to_save` is set, and otherwise leaves layer 1 with an
untrained LoRA after that warning. Explicit `target_modules` / `modules_to_save` names absent from the base are
ignored unless none of the target modules matches.) PEFT offers no per-model hook to make this fail: the check
lives inside `load_adapter`, and the only ways in are global (PEFT's task-type registry, transformers' conversion
table) or torch `load_state_dict` hooks that cannot tell PEFT's lenient load from a user's deliberate
`strict=False`. Hence `load_lora_adapter` is the checked way to reload a BRIDGE adapter.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from peft import LoraConfig, PeftConfig, PeftModel, PeftType, get_peft_model, load_peft_weights
from peft.tuners.tuners_utils import BaseTunerLayer, check_target_module_exists
from peft.utils.constants import INCLUDE_LINEAR_LAYERS_SHORTHAND
from torch import nn

from ..towers_bridge import ATTENTION_PROJECTIONS, TowerGeometry
from .stages import find_bridge_model, transformer_blocks


# The query/key/value leaf names a default tower LoRA adapts (per tower family: `TowerGeometry.attention_projections`).
TOWER_QKV_NAMES = ATTENTION_PROJECTIONS

# Projections of BRIDGE's own cross-attention (`BridgeCrossAttention`), all four adapted.
INTERACTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")

# Learned scalars trained in full next to the adapter (PEFT `modules_to_save`; each is a `BridgeScalar` module, and
# PEFT matches these names as suffixes). logit_scale and itc_alpha enter the losses; the per-layer gates decide how
# much of the interaction reaches each stream; and since BRIDGE L2-normalises queries and keys, a LoRA on q/k can
# only rotate them: the attention temperatures are the only way to sharpen or flatten the interaction's attention.
DEFAULT_MODULES_TO_SAVE = ("logit_scale", "itc_alpha", "text_gate", "vision_gate", "temperature")


def _linear_children(module: nn.Module, prefix: str, names: Iterable[str]) -> list[str]:
    wanted = set(names)
    return [
        f"{prefix}{name}"
        for name, child in module.named_modules()
        if name.rsplit(".", 1)[-1] in wanted and isinstance(child, nn.Linear)
    ]


def default_lora_target_modules(model: nn.Module, towers: bool = True, interaction: bool = True) -> list[str]:
    """Full names (relative to `model`) of the modules a BRIDGE LoRA adapts by default.

    - interaction: `q_proj/k_proj/v_proj/o_proj` of every `BridgeCrossAttention` (both directions, every layer);
    - towers: the query/key/value linears (leaf names in `TOWER_QKV_NAMES`) inside each tower's stack of transformer
      blocks, found by structure (`transformer_blocks`), so poolers, embeddings and heads are never hit; a
      convolutional tower (ResNet, ConvNeXt) has no attention and is left out.

    `model` is a `BridgeModel`, `BridgeForPreTraining` or any model holding one (task heads), loaded locally or as
    Hub code. Raises ValueError when a tower's blocks hold no recognised attention projection, listing the linear
    layers of its first block, rather than returning an adapter that silently skips the tower.
    """
    if isinstance(model, PeftModel) or any(isinstance(m, BaseTunerLayer) for m in model.modules()):
        raise ValueError("default_lora_target_modules takes the base model, not a PEFT-wrapped one.")
    bridge = find_bridge_model(model)
    prefix = {id(module): name for name, module in model.named_modules()}
    base = prefix[id(bridge)]
    base = f"{base}." if base else ""
    targets: list[str] = []
    if interaction:
        for name, module in bridge.named_modules():
            # by class name, not isinstance: Hub-code models define their own BridgeCrossAttention class
            if type(module).__name__ == "BridgeCrossAttention":
                for projection in INTERACTION_PROJECTIONS:
                    if not isinstance(getattr(module, projection, None), nn.Linear):
                        raise ValueError(f"{base}{name}.{projection} is not an nn.Linear; cannot adapt it.")
                    targets.append(f"{base}{name}.{projection}")
        if not targets:
            raise ValueError(
                f"{type(bridge).__name__} has no BridgeCrossAttention module to adapt "
                f"(num_interaction_layers={getattr(bridge.config, 'num_interaction_layers', '?')})."
            )
    if towers:
        for tower_name in ("vision_model", "text_model"):
            tower = getattr(bridge, tower_name)
            names = TowerGeometry(tower.config).attention_projections
            if not names:
                continue  # no attention to adapt (ResNet, ConvNeXt): LoRA stays in the interaction and the other tower
            blocks_name, blocks = transformer_blocks(tower)
            stack = f"{base}{tower_name}.{blocks_name}."
            found = _linear_children(blocks, stack, names)
            if not found:
                linears = [n for n, m in blocks[0].named_modules() if isinstance(m, nn.Linear)]
                raise ValueError(
                    f"No attention projection found in the {tower_name} ({type(tower).__name__}): the linear layers "
                    f"of its first block are {linears}, none named one of {sorted(names)}. Pass "
                    "target_modules= explicitly (e.g. default_lora_target_modules(model, towers=False) plus this "
                    "tower's attention projections)."
                )
            targets += found
    return targets


def make_lora_model(
    model: nn.Module,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.0,
    target_modules: Sequence[str] | str | None = None,
    modules_to_save: Sequence[str] | None = DEFAULT_MODULES_TO_SAVE,
    adapter_name: str = "default",
):
    """Wrap a BRIDGE model with a LoRA adapter (`peft.get_peft_model`) and return the `PeftModel`.

    Only the LoRA matrices and `modules_to_save` (the learned scalars, see `DEFAULT_MODULES_TO_SAVE`) are trainable
    afterwards; everything else, towers included, is frozen. `task_type=None` makes the wrapper a pure pass-through,
    so the `PeftModel` takes the base model's inputs and returns its outputs (losses included). `target_modules`
    defaults to `default_lora_target_modules(model)`; a string is a regex PEFT full-matches against module names.
    (PEFT writes a long explicit list to adapter_config.json as the minimal set of suffixes that selects the same
    modules.)

    Reload with `load_lora_adapter(BridgeForPreTraining.from_pretrained(base_dir), adapter_dir)`; for Hub code use
    `AutoModel...from_pretrained(base, trust_remote_code=True)` as the base (`AutoPeftModel` refuses it).
    """
    if r < 1:
        raise ValueError(f"LoRA rank r must be >= 1, got {r}.")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout}.")
    if target_modules is None:
        target_modules = default_lora_target_modules(model)
    elif not isinstance(target_modules, str):
        target_modules = list(target_modules)
        if not target_modules:
            raise ValueError("target_modules is empty: give module names, a regex, or None for the defaults.")
    if modules_to_save:
        present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        if modules_to_save is DEFAULT_MODULES_TO_SAVE:  # itc_alpha exists on BridgeForPreTraining only
            modules_to_save = [name for name in modules_to_save if name in present]
        missing = [name for name in modules_to_save if name.rsplit(".", 1)[-1] not in present]
        if missing:
            raise ValueError(f"modules_to_save {missing} name no module of {type(model).__name__}.")
    config = LoraConfig(
        task_type=None,
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules,
        modules_to_save=list(modules_to_save) if modules_to_save else None,
    )
    return get_peft_model(model, config, adapter_name=adapter_name)


# PEFT's prefix on every key of a saved adapter: the PeftModel's `base_model` (the tuner) and its `model`.
_PEFT_KEY_PREFIX = "base_model.model."
# Keyword arguments of `PeftModel.from_pretrained` that say where the adapter files are (also needed to check them).
_LOCATION_KWARGS = ("subfolder", "revision", "cache_dir", "token")
_SHOWN = 5  # names listed in full in an error message; the rest are counted


class LoraAdapterMismatchError(ValueError):
    """A saved LoRA adapter does not fit the base model it was loaded onto (see `load_lora_adapter`).

    The message lists a few names of each kind; the attributes hold them all: `unmatched_keys` (adapter weights that
    would be dropped), `untrained_modules` (modules the adapter's config adapts in this base but has no weights for)
    and `absent_entries` (`target_modules` / `modules_to_save` entries of adapter_config.json naming no module)."""

    def __init__(
        self, message: str, unmatched_keys: list[str], untrained_modules: list[str], absent_entries: list[str]
    ):
        super().__init__(message)
        self.unmatched_keys = unmatched_keys
        self.untrained_modules = untrained_modules
        self.absent_entries = absent_entries


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown if len(names) <= _SHOWN else f"{shown}, ... ({len(names)} in all)"


def _lora_module(key: str) -> str | None:
    """Module of a LoRA weight (`x.q_proj.lora_A.weight` -> `x.q_proj`; DoRA's `lora_magnitude_vector` too); None
    for full weights saved alongside (modules_to_save)."""
    parts = key.split(".")
    for index, part in enumerate(parts):
        if part.startswith("lora_"):
            return ".".join(parts[:index])
    return None


def _bridge_prefix(names: Iterable[str]) -> str | None:
    """Where the BridgeModel sits among these names ('bridge.' in BridgeForPreTraining, '' in BridgeModel)."""
    for name in names:
        match = re.match(r"(.*?)(?:interaction_layers|vision_model|text_model)\.", name)
        if match:
            return match.group(1)
    return None


def _check_adapter_fits(model: nn.Module, adapter_dir, config: PeftConfig, weights: dict) -> None:
    """Raise LoraAdapterMismatchError unless every saved weight has its place in `model` and every module the
    adapter's config adapts in `model` has its saved weights: the two ways PEFT would load a wrong model quietly.
    Matching follows PEFT: LoRA layers go where `check_target_module_exists` says, `modules_to_save` entries are
    name suffixes, and each saved key is a PeftModel state-dict key without the adapter name."""
    modules = dict(model.named_modules())
    del modules[""]
    state_keys = set(model.state_dict())
    keys = {key: key.removeprefix(_PEFT_KEY_PREFIX) for key in weights}
    saved = set(keys.values())

    all_linear = config.target_modules == INCLUDE_LINEAR_LAYERS_SHORTHAND  # PEFT expands it at load; not checked
    targeted = None if all_linear else {name for name in modules if check_target_module_exists(config, name)}
    saved_modules = {_lora_module(name) for name in saved} - {None}

    unmatched = []
    for key, name in keys.items():
        module = _lora_module(name)
        if module is None:
            fits = key.startswith(_PEFT_KEY_PREFIX) and name in state_keys
        else:
            fits = key.startswith(_PEFT_KEY_PREFIX) and module in modules and (targeted is None or module in targeted)
        if not fits:
            unmatched.append(key)

    untrained = set() if targeted is None else targeted - saved_modules
    to_save = list(config.modules_to_save or ())
    for name, module in modules.items():
        if any(name.endswith(entry) for entry in to_save):
            if any(f"{name}.{tensor}" not in saved for tensor in module.state_dict()):
                untrained.add(name)

    absent = [f"modules_to_save {entry!r}" for entry in to_save if not any(n.endswith(entry) for n in modules)]
    if isinstance(config.target_modules, str):
        if not all_linear and not targeted:
            absent.insert(0, f"target_modules {config.target_modules!r}")
    else:
        absent[:0] = [
            f"target_modules {entry!r}"
            for entry in sorted(config.target_modules or ())
            if not any(n == entry or n.endswith(f".{entry}") for n in modules)
        ]

    if not (unmatched or untrained or absent):
        return
    unmatched, untrained = sorted(unmatched), sorted(untrained)
    bridge = find_bridge_model(model)
    layers = getattr(bridge.config, "num_interaction_layers", len(bridge.interaction_layers))
    indices = sorted({int(i) for name in saved for i in re.findall(r"(?:^|\.)interaction_layers\.(\d+)\.", name)})
    if indices:
        # weights for layers 0..n-1 mean a base with n layers; a gap (layers_to_transform) only bounds it
        expects = f"={len(indices)}" if indices == list(range(len(indices))) else f" >= {indices[-1] + 1}"
        held = (
            f"weights for interaction layer(s) {_listing([str(i) for i in indices])}, so it expects "
            f"num_interaction_layers{expects}"
        )
    else:
        held = "no interaction-layer weights"
    lines = [
        f"The LoRA adapter {str(adapter_dir)!r} does not fit this {type(model).__name__}: it has "
        f"num_interaction_layers={layers}; the adapter holds {held}."
    ]
    if unmatched:
        lines.append(
            f"- {len(unmatched)} adapter weight(s) match nothing in this model and would be silently dropped: "
            f"{_listing(unmatched)}"
        )
    if untrained:
        lines.append(
            f"- {len(untrained)} module(s) that the adapter's config adapts or trains in this model have no "
            f"saved weights and would stay untrained: {_listing(untrained)}"
        )
    if absent:
        lines.append(f"- adapter_config.json names modules this model lacks: {_listing(absent)}")
    adapter_prefix, base_prefix = _bridge_prefix(saved), _bridge_prefix(modules)
    if adapter_prefix is not None and base_prefix is not None and adapter_prefix != base_prefix:
        lines.append(
            f"The adapter's BridgeModel weights sit under {adapter_prefix!r}, this model's under "
            f"{base_prefix!r} ('bridge.' in BridgeForPreTraining, '' in BridgeModel): load the base with the "
            "class the adapter was trained on."
        )
    trained_on = getattr(config, "base_model_name_or_path", None)
    lines.append(
        "Load the base model the adapter was trained on"
        + (f" (adapter_config.json: base_model_name_or_path={trained_on!r})" if trained_on else "")
        + " and pass that."
    )
    raise LoraAdapterMismatchError("\n".join(lines), unmatched, untrained, absent)


def load_lora_adapter(
    model: nn.Module, adapter_dir, adapter_name: str = "default", is_trainable: bool = False, **kwargs
) -> PeftModel:
    """Put a saved LoRA adapter (folder or Hub id) on a BRIDGE base and return the `PeftModel`; checked first.

    `PeftModel.from_pretrained` silently drops adapter weights that match nothing in the base (an adapter for 2
    interaction layers on a 1-layer base loses layer 1; see the module docstring). This raises
    `LoraAdapterMismatchError` (a ValueError) instead, before the base is touched, when a saved weight has no place
    in `model`, a module the adapter's config adapts in `model` has no saved weights, or a `target_modules` /
    `modules_to_save` entry names no module of `model`. Otherwise it is `PeftModel.from_pretrained(model,
    adapter_dir, adapter_name=..., is_trainable=..., **kwargs)`.

    `model` is the base the adapter was trained on: `BridgeModel`, `BridgeForPreTraining` or a model holding one,
    local or Hub code (`AutoModel...from_pretrained(repo, trust_remote_code=True)`), never already PEFT-wrapped.
    """
    if isinstance(model, PeftModel) or any(isinstance(m, BaseTunerLayer) for m in model.modules()):
        raise ValueError("load_lora_adapter takes the base model, not a PEFT-wrapped one; load the base afresh.")
    find_bridge_model(model)  # a clear error for a non-BRIDGE model
    location = {name: kwargs[name] for name in _LOCATION_KWARGS if name in kwargs}
    config = PeftConfig.from_pretrained(adapter_dir, **location)
    if config.peft_type != PeftType.LORA:
        raise ValueError(f"{str(adapter_dir)!r} holds a {config.peft_type} adapter; load_lora_adapter loads LoRA.")
    # PEFT would also rename keys by transformers' architecture-level conversions, but none is registered for
    # model_type "bridge" (the towers' renamings apply to their own checkpoints), so keys are compared as saved.
    weights = load_peft_weights(adapter_dir, device="cpu", key_mapping=kwargs.get("key_mapping"), **location)
    _check_adapter_fits(model, adapter_dir, config, weights)
    return PeftModel.from_pretrained(
        model, adapter_dir, adapter_name=adapter_name, is_trainable=is_trainable, **kwargs
    )


__all__ = [
    "DEFAULT_MODULES_TO_SAVE",
    "TOWER_QKV_NAMES",
    "LoraAdapterMismatchError",
    "default_lora_target_modules",
    "load_lora_adapter",
    "make_lora_model",
]
