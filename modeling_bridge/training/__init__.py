"""Training utilities (not Hub code): the staged curriculum, the Trainer subclass, crash-safe saving."""

from ..saving import replace_directory, save_pretrained_atomically
from .lora import LoraAdapterMismatchError, default_lora_target_modules, load_lora_adapter, make_lora_model
from .stages import (
    TrainingStage,
    apply_training_stage,
    find_bridge_model,
    load_training_stage,
    set_tower_trainable_blocks,
    transformer_blocks,
)
from .tower_cache import TowerStateCollator, cache_tower_states
from .trainer import BridgeTrainer


__all__ = [
    "BridgeTrainer",
    "TowerStateCollator",
    "TrainingStage",
    "apply_training_stage",
    "cache_tower_states",
    "LoraAdapterMismatchError",
    "default_lora_target_modules",
    "find_bridge_model",
    "load_training_stage",
    "load_lora_adapter",
    "make_lora_model",
    "replace_directory",
    "save_pretrained_atomically",
    "set_tower_trainable_blocks",
    "transformer_blocks",
]
