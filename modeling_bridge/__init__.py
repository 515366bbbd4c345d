"""BRIDGE for the Hugging Face ecosystem.

Importing the package registers BRIDGE with the Auto classes (config, model, processor, the zero-shot
image-classification and visual-question-answering mappings, and this package's `AutoModelForImageTextRetrieval` /
`AutoModelForVisualReasoning`), so `AutoModel.from_pretrained(dir)` and
`pipeline("zero-shot-image-classification", model=dir)` work without `trust_remote_code`. Nothing else of transformers
is changed: no pipeline class is re-registered.
"""

import transformers
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

from . import auto
from . import modeling_bridge as _modeling
from .auto import AutoModelForImageTextRetrieval, AutoModelForVisualReasoning
from .configuration_bridge import BridgeConfig
from .configuration_langbridge import LangBridgeConfig
from .modeling_bridge import *  # noqa: F403  (the model classes, outputs and tables: modeling_bridge.__all__)
from .modeling_bridge import BRIDGE_MODEL_CLASSES
from .modeling_langbridge import BridgeForConditionalGeneration, build_vocabulary_subset
from .pipelines import BridgeVisualQuestionAnsweringPipeline, BridgeZeroShotImageClassificationPipeline
from .processing_bridge import BridgeProcessor
from .processing_langbridge import BridgeGenerationProcessor


__version__ = "0.1.0"

AutoConfig.register(BridgeConfig.model_type, BridgeConfig, exist_ok=True)
AutoConfig.register(LangBridgeConfig.model_type, LangBridgeConfig, exist_ok=True)
AutoModelForImageTextToText.register(LangBridgeConfig, BridgeForConditionalGeneration, exist_ok=True)
AutoProcessor.register(BridgeConfig, BridgeProcessor, exist_ok=True)
AutoProcessor.register(LangBridgeConfig, BridgeGenerationProcessor, exist_ok=True)

# Saving then writes the Hub code files and `auto_map`, for loading with trust_remote_code=True.
BridgeConfig.register_for_auto_class()
LangBridgeConfig.register_for_auto_class()
BridgeForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
BridgeProcessor.register_for_auto_class("AutoProcessor")
BridgeGenerationProcessor.register_for_auto_class("AutoProcessor")
# BRIDGE's model classes, from their one table: every Auto class that loads each, and the one its saves name.
for _model_class, _auto_names in BRIDGE_MODEL_CLASSES.items():
    for _name in _auto_names:
        # transformers' Auto classes, else this package's own (tasks transformers has none for)
        (getattr(transformers, _name, None) or getattr(auto, _name)).register(
            BridgeConfig, _model_class, exist_ok=True
        )
    if hasattr(transformers, _auto_names[0]):
        _model_class.register_for_auto_class(_auto_names[0])
    else:  # transformers' register_for_auto_class accepts only its own names
        _model_class._auto_class = _auto_names[0]

__all__ = [
    *_modeling.__all__,
    "AutoModelForImageTextRetrieval",
    "AutoModelForVisualReasoning",
    "BridgeConfig",
    "BridgeForConditionalGeneration",
    "BridgeGenerationProcessor",
    "BridgeProcessor",
    "BridgeVisualQuestionAnsweringPipeline",
    "BridgeZeroShotImageClassificationPipeline",
    "LangBridgeConfig",
    "build_vocabulary_subset",
]
