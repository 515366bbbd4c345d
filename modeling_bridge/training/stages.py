"""The staged curriculum (the paper's stages A-C): which tower blocks train, with which loss weights and learning rate.

The presets ship inside the package, as `modeling_bridge/training/presets/stage_{a,b,c}.json` (package data, read
with importlib.resources, so they load from an installed wheel too); `apply_training_stage` applies one to any BRIDGE
model (BridgeModel, BridgeForPreTraining, or a PEFT wrapper around either) whatever its tower types.
"""

import json
import os
import warnings
from dataclasses import dataclass, field
from importlib import resources

from torch import nn

from ..configuration_bridge import LOSS_NAMES


# The preset names, read from the preset folder: a new `stage_x.json` there is preset "x".
STAGE_NAMES = tuple(
    sorted(
        entry.name[len("stage_") : -len(".json")]
        for entry in resources.files(__package__).joinpath("presets").iterdir()
        if entry.name.startswith("stage_") and entry.name.endswith(".json")
    )
)


@dataclass
class TrainingStage:
    """One stage of the recipe.

    `*_trainable_blocks`: 0 freezes the tower, k > 0 trains its top k transformer blocks (and the norms after them),
    -1 trains all of it. A k larger than the tower's depth trains every block, with a warning: the presets are
    written for base-size towers (12 blocks) and a stage is a recipe meant to carry over to smaller models.
    `loss_weights` maps itc/itm/mlm/mim/cycle to the config's `*_loss_weight` fields.
    """

    stage: str
    vision_trainable_blocks: int = 0
    text_trainable_blocks: int = 0
    loss_weights: dict[str, float] = field(default_factory=dict)
    learning_rate: float = 1e-4
    weight_decay: float = 0.05
    warmup_ratio: float = 0.0
    max_grad_norm: float = 1.0
    description: str = ""

    def __post_init__(self):
        for name in ("vision_trainable_blocks", "text_trainable_blocks"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < -1:
                raise ValueError(f"Stage {self.stage!r}: {name}={value!r} must be -1 (all), 0 (frozen) or k > 0.")
        unknown = sorted(set(self.loss_weights) - set(LOSS_NAMES))
        if unknown:
            raise ValueError(f"Stage {self.stage!r}: unknown loss weights {unknown}; use {list(LOSS_NAMES)}.")
        for name, weight in self.loss_weights.items():
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
                raise ValueError(
                    f"Stage {self.stage!r}: loss weight {name}={weight!r} must be a number >= 0 "
                    "(0 disables the component)."
                )

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "TrainingStage":
        with open(path, encoding="utf-8") as f:
            try:
                fields = json.load(f)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}: not valid JSON ({error}).") from None
        if not isinstance(fields, dict):
            raise ValueError(f"{path}: a stage file holds one JSON object, got {type(fields).__name__}.")
        try:
            return cls(**fields)
        except TypeError as error:  # an unknown or missing key in the file
            raise ValueError(f"{path}: {error}. Known keys: {sorted(cls.__dataclass_fields__)}.") from None


def load_training_stage(name_or_path: str | os.PathLike) -> TrainingStage:
    """A preset by name ("a", "b", "c", or "stage_a") or a JSON file with the same keys."""
    key = str(name_or_path).lower().removeprefix("stage_")
    if key in STAGE_NAMES:
        preset = resources.files(__package__).joinpath("presets", f"stage_{key}.json")
        with resources.as_file(preset) as path:  # a real file even if the package is imported from a zip
            return TrainingStage.from_file(path)
    if not os.path.isfile(name_or_path):
        raise FileNotFoundError(
            f"No training stage {name_or_path!r}: give one of {STAGE_NAMES} or the path of a stage JSON file."
        )
    return TrainingStage.from_file(name_or_path)


def transformer_blocks(tower: nn.Module) -> tuple[str, nn.ModuleList]:
    """The tower's stack of repeated blocks: the longest `nn.ModuleList` whose children all share one class.

    Found by structure, not by name, so it works for `encoder.layer` (BERT, ViT, DINOv2), `encoder.layers`
    (CLIP, SigLIP) or any other layout.
    """
    best_name, best = None, None
    for name, module in tower.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            if len({type(child) for child in module}) == 1 and (best is None or len(module) > len(best)):
                best_name, best = name, module
    if best is None:
        raise ValueError(f"{type(tower).__name__} has no stack of repeated blocks (nn.ModuleList) to unfreeze.")
    return best_name, best


def set_tower_trainable_blocks(tower: nn.Module, num_blocks: int, tower_name: str = "") -> None:
    """Freeze `tower`, then unfreeze its top `num_blocks` blocks and every parameter registered after the block stack
    (final norms); -1 unfreezes everything, 0 nothing.

    More blocks than the tower has is clamped to all of them, with a warning naming `tower_name` (e.g. "vision")
    and both numbers, rather than an error: stage B's "top 4" must also run on a 2-block test model. The clamped
    result still leaves the embeddings frozen; -1 trains those too.
    """
    if num_blocks == -1:
        tower.requires_grad_(True)
        return
    tower.requires_grad_(False)
    if num_blocks == 0:
        return
    name, blocks = transformer_blocks(tower)
    if num_blocks > len(blocks):
        label = f"{tower_name} tower ({type(tower).__name__})" if tower_name else type(tower).__name__
        warnings.warn(
            f"Cannot train the top {num_blocks} blocks of the {label}: it has {len(blocks)}. Training "
            f"all {len(blocks)} instead (its embeddings stay frozen; -1 trains them too).",
            UserWarning,
            stacklevel=3,
        )
        num_blocks = len(blocks)
    for block in list(blocks)[-num_blocks:]:
        block.requires_grad_(True)
    names = [n for n, _ in tower.named_parameters()]
    prefix = f"{name}."
    last_block_param = max(i for i, n in enumerate(names) if n.startswith(prefix))
    parameters = dict(tower.named_parameters())
    for n in names[last_block_param + 1 :]:
        parameters[n].requires_grad_(True)


def find_bridge_model(model: nn.Module) -> nn.Module:
    """The BridgeModel inside `model` (itself, BridgeForPreTraining's `.bridge`, a PEFT wrapper's), found by its
    parts rather than its class so that Hub-code classes qualify too."""
    for module in model.modules():
        # its own child modules, not attributes: wrappers such as PeftModel forward attribute lookups to the model
        if all(name in module._modules for name in ("vision_model", "text_model", "interaction_layers")):
            return module
    raise ValueError(f"{type(model).__name__} contains no BridgeModel (vision_model, text_model, interaction_layers).")


def apply_training_stage(model: nn.Module, stage: TrainingStage | str | os.PathLike) -> TrainingStage:
    """Set the config's loss weights and `requires_grad` for `stage`; returns the stage (for its optimiser
    settings). What BRIDGE adds (interaction layers, projections, scalars, the heads of enabled objectives) trains.
    A tower shallower than the stage's block count trains all its blocks, with a warning (see
    `set_tower_trainable_blocks`). On a model with a PEFT (LoRA) adapter only the loss weights are set: the adapter
    decides what trains."""
    if not isinstance(stage, TrainingStage):
        stage = load_training_stage(stage)
    bridge = find_bridge_model(model)
    for name, weight in stage.loss_weights.items():
        setattr(bridge.config, f"{name}_loss_weight", float(weight))
    if any("lora_" in name for name, _ in model.named_parameters()):
        # A PEFT adapter decides what trains; unfreezing here would train the frozen base weights under it.
        return stage
    # What BRIDGE adds: the BridgeModel's own parts, and the heads of the model around it (BridgeForPreTraining's
    # MLM / MIM heads and itc_alpha).
    added = {name: module for name, module in bridge.named_children() if name not in ("vision_model", "text_model")}
    if model is not bridge:
        added.update((name, module) for name, module in model.named_children() if module is not bridge)
    for module in added.values():
        module.requires_grad_(True)
    # Heads of disabled objectives get no gradient; trainable but unused parameters break DDP without
    # find_unused_parameters (Trainer turns it off under gradient checkpointing).
    for head, weight_field in (
        ("mlm_head", "mlm_loss_weight"),
        ("mim_head", "mim_loss_weight"),
        ("itm_head", "itm_loss_weight"),
    ):
        if getattr(bridge.config, weight_field) == 0 and head in added:
            added[head].requires_grad_(False)
    set_tower_trainable_blocks(bridge.vision_model, stage.vision_trainable_blocks, "vision")
    set_tower_trainable_blocks(bridge.text_model, stage.text_trainable_blocks, "text")
    return stage


__all__ = [
    "TrainingStage",
    "find_bridge_model",
    "apply_training_stage",
    "load_training_stage",
    "set_tower_trainable_blocks",
    "transformer_blocks",
]
