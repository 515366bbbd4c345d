"""BRIDGE for the Hugging Face ecosystem.

Importing the package registers BRIDGE with the Auto classes (config, model, processor and the zero-shot
image-classification mapping), so `AutoModel.from_pretrained(dir)` and
`pipeline("zero-shot-image-classification", model=dir)` work without `trust_remote_code`. Nothing else of transformers
is changed: no pipeline class is re-registered.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForPreTraining,
    AutoModelForVisualQuestionAnswering,
    AutoModelForZeroShotImageClassification,
    AutoProcessor,
)

from .configuration_bridge import BridgeConfig
from .modeling_bridge import (
    BridgeCrossAttention,
    BridgeForPreTraining,
    BridgeForPreTrainingOutput,
    BridgeForQuestionAnswering,
    BridgeForQuestionAnsweringOutput,
    BridgeInteractionLayer,
    BridgeInteractionOutput,
    BridgeModel,
    BridgeOutput,
    BridgePreTrainedModel,
)
from .pipelines import BridgeZeroShotImageClassificationPipeline
from .processing_bridge import BridgeProcessor


__version__ = "0.1.0"

AutoConfig.register(BridgeConfig.model_type, BridgeConfig, exist_ok=True)
AutoModel.register(BridgeConfig, BridgeModel, exist_ok=True)
AutoModelForZeroShotImageClassification.register(BridgeConfig, BridgeModel, exist_ok=True)
AutoModelForPreTraining.register(BridgeConfig, BridgeForPreTraining, exist_ok=True)
AutoModelForVisualQuestionAnswering.register(BridgeConfig, BridgeForQuestionAnswering, exist_ok=True)
AutoProcessor.register(BridgeConfig, BridgeProcessor, exist_ok=True)

# Saving then writes the Hub code files and `auto_map`, for loading with trust_remote_code=True.
BridgeConfig.register_for_auto_class()
BridgeModel.register_for_auto_class("AutoModel")
BridgeForPreTraining.register_for_auto_class("AutoModelForPreTraining")
BridgeForQuestionAnswering.register_for_auto_class("AutoModelForVisualQuestionAnswering")
BridgeProcessor.register_for_auto_class("AutoProcessor")

__all__ = [
    "BridgeConfig",
    "BridgeCrossAttention",
    "BridgeForPreTraining",
    "BridgeForPreTrainingOutput",
    "BridgeForQuestionAnswering",
    "BridgeForQuestionAnsweringOutput",
    "BridgeInteractionLayer",
    "BridgeInteractionOutput",
    "BridgeModel",
    "BridgeOutput",
    "BridgePreTrainedModel",
    "BridgeProcessor",
    "BridgeZeroShotImageClassificationPipeline",
]
