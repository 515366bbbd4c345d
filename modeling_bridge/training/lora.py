"""PEFT LoRA for BRIDGE: tower-aware default targets and a one-call wrapper.

Why not PEFT's defaults: model_type "bridge" has no entry in PEFT's target table, `"all-linear"` also adapts the
heads and projections, and a fixed list such as `["query", "value"]` silently misses a transformers-v5 ViT (whose
attention linears are `q_proj/k_proj/v_proj` in memory) while `["q_proj", "v_proj"]` misses BERT
(`query/key/value`). So the targets are read off the actual model: every module is named explicitly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from .stages import find_bridge_model, transformer_blocks

# Leaf names of the query/key/value linears of the attention in common towers: v5 ViT, DINOv2, CLIP, SigLIP use
# q_proj/k_proj/v_proj; BERT, RoBERTa, ELECTRA query/key/value; DistilBERT, T5 q/k/v; fused projections qkv
# (DINOv3-style), Wqkv (ModernBERT), query_key_value. Output projections are left out on purpose: their names
# (`output.dense` in BERT) collide with the feed-forward's, and q/k/v is the usual LoRA placement.
TOWER_QKV_NAMES = frozenset({"q_proj", "k_proj", "v_proj", "query", "key", "value", "q", "k", "v", "q_lin",
                             "k_lin", "v_lin", "qkv", "Wqkv", "query_key_value"})

# Projections of BRIDGE's own cross-attention (`BridgeCrossAttention`), all four adapted.
INTERACTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")

# Learned scalars trained in full next to the adapter (PEFT `modules_to_save`; each is a `BridgeScalar` module, and
# PEFT matches these names as suffixes). logit_scale and itc_alpha enter the losses; the per-layer gates decide how
# much of the interaction reaches each stream; and since BRIDGE L2-normalises queries and keys, a LoRA on q/k can
# only rotate them: the attention temperatures are the only way to sharpen or flatten the interaction's attention.
DEFAULT_MODULES_TO_SAVE = ("logit_scale", "itc_alpha", "text_gate", "vision_gate", "temperature")


def _linear_children(module: nn.Module, prefix: str, names: Iterable[str]) -> list[str]:
    wanted = set(names)
    return [f"{prefix}{name}" for name, child in module.named_modules()
            if name.rsplit(".", 1)[-1] in wanted and isinstance(child, nn.Linear)]


def default_lora_target_modules(model: nn.Module, towers: bool = True, interaction: bool = True) -> list[str]:
    """Full names (relative to `model`) of the modules a BRIDGE LoRA adapts by default.

    - interaction: `q_proj/k_proj/v_proj/o_proj` of every `BridgeCrossAttention` (both directions, every layer);
    - towers: the query/key/value linears (leaf names in `TOWER_QKV_NAMES`) inside each tower's stack of transformer
      blocks, found by structure (`transformer_blocks`), so poolers, embeddings and heads are never hit.

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
            raise ValueError(f"{type(bridge).__name__} has no BridgeCrossAttention module to adapt "
                             f"(num_interaction_layers={getattr(bridge.config, 'num_interaction_layers', '?')}).")
    if towers:
        for tower_name in ("vision_model", "text_model"):
            tower = getattr(bridge, tower_name)
            blocks_name, blocks = transformer_blocks(tower)
            stack = f"{base}{tower_name}.{blocks_name}."
            found = _linear_children(blocks, stack, TOWER_QKV_NAMES)
            if not found:
                linears = [n for n, m in blocks[0].named_modules() if isinstance(m, nn.Linear)]
                raise ValueError(
                    f"No attention projection found in the {tower_name} ({type(tower).__name__}): the linear layers "
                    f"of its first block are {linears}, none named one of {sorted(TOWER_QKV_NAMES)}. Pass "
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

    Reload: `PeftModel.from_pretrained(BridgeForPreTraining.from_pretrained(base_dir), adapter_dir)`; for Hub code
    use `AutoModel...from_pretrained(base, trust_remote_code=True)` as the base (`AutoPeftModel` refuses it).
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


__all__ = ["DEFAULT_MODULES_TO_SAVE", "TOWER_QKV_NAMES", "default_lora_target_modules", "make_lora_model"]
