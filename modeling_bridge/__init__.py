"""BRIDGE for the Hugging Face ecosystem.

Importing the package registers BRIDGE with the Auto classes (config, model, processor, the zero-shot
image-classification and visual-question-answering mappings, and this package's `AutoModelForImageTextRetrieval` /
`AutoModelForVisualReasoning`), so `AutoModel.from_pretrained(dir)` and
`pipeline("zero-shot-image-classification", model=dir)` work without `trust_remote_code`. Nothing else of transformers
is changed: no pipeline class is re-registered.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageTextToText,
    AutoModelForPreTraining,
    AutoModelForVisualQuestionAnswering,
    AutoModelForZeroShotImageClassification,
    AutoProcessor,
)

from .auto import AutoModelForImageTextRetrieval, AutoModelForVisualReasoning
from .configuration_bridge import BridgeConfig
from .configuration_langbridge import LangBridgeConfig
from .modeling_bridge import (
    BridgeCrossAttention,
    BridgeForImageTextRetrieval,
    BridgeForImageTextRetrievalOutput,
    BridgeForPreTraining,
    BridgeForPreTrainingOutput,
    BridgeForQuestionAnswering,
    BridgeForQuestionAnsweringOutput,
    BridgeForVisualReasoning,
    BridgeForVisualReasoningOutput,
    BridgeInteractionLayer,
    BridgeInteractionOutput,
    BridgeModel,
    BridgeOutput,
    BridgePreTrainedModel,
)
from .modeling_langbridge import BridgeForConditionalGeneration, build_vocabulary_subset
from .pipelines import BridgeVisualQuestionAnsweringPipeline, BridgeZeroShotImageClassificationPipeline
from .processing_bridge import BridgeProcessor
from .processing_langbridge import BridgeGenerationProcessor


__version__ = "0.1.0"

AutoConfig.register(BridgeConfig.model_type, BridgeConfig, exist_ok=True)
AutoConfig.register(LangBridgeConfig.model_type, LangBridgeConfig, exist_ok=True)
AutoModelForImageTextToText.register(LangBridgeConfig, BridgeForConditionalGeneration, exist_ok=True)
AutoModel.register(BridgeConfig, BridgeModel, exist_ok=True)
AutoModelForZeroShotImageClassification.register(BridgeConfig, BridgeModel, exist_ok=True)
AutoModelForPreTraining.register(BridgeConfig, BridgeForPreTraining, exist_ok=True)
AutoModelForVisualQuestionAnswering.register(BridgeConfig, BridgeForQuestionAnswering, exist_ok=True)
AutoModelForImageTextRetrieval.register(BridgeConfig, BridgeForImageTextRetrieval, exist_ok=True)
AutoModelForVisualReasoning.register(BridgeConfig, BridgeForVisualReasoning, exist_ok=True)
AutoProcessor.register(BridgeConfig, BridgeProcessor, exist_ok=True)
AutoProcessor.register(LangBridgeConfig, BridgeGenerationProcessor, exist_ok=True)

# Saving then writes the Hub code files and `auto_map`, for loading with trust_remote_code=True.
BridgeConfig.register_for_auto_class()
LangBridgeConfig.register_for_auto_class()
BridgeForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
BridgeModel.register_for_auto_class("AutoModel")
BridgeForPreTraining.register_for_auto_class("AutoModelForPreTraining")
BridgeForQuestionAnswering.register_for_auto_class("AutoModelForVisualQuestionAnswering")
BridgeProcessor.register_for_auto_class("AutoProcessor")
BridgeGenerationProcessor.register_for_auto_class("AutoProcessor")
# This package's own Auto classes: transformers' register_for_auto_class accepts only its own names.
BridgeForImageTextRetrieval._auto_class = "AutoModelForImageTextRetrieval"
BridgeForVisualReasoning._auto_class = "AutoModelForVisualReasoning"

__all__ = [
    "AutoModelForImageTextRetrieval",
    "AutoModelForVisualReasoning",
    "BridgeConfig",
    "BridgeCrossAttention",
    "BridgeForConditionalGeneration",
    "BridgeGenerationProcessor",
    "BridgeForImageTextRetrieval",
    "BridgeForImageTextRetrievalOutput",
    "BridgeForPreTraining",
    "BridgeForPreTrainingOutput",
    "BridgeForQuestionAnswering",
    "BridgeForQuestionAnsweringOutput",
    "BridgeForVisualReasoning",
    "BridgeForVisualReasoningOutput",
    "BridgeInteractionLayer",
    "BridgeInteractionOutput",
    "BridgeModel",
    "BridgeOutput",
    "BridgePreTrainedModel",
    "BridgeProcessor",
    "BridgeVisualQuestionAnsweringPipeline",
    "BridgeZeroShotImageClassificationPipeline",
    "LangBridgeConfig",
    "build_vocabulary_subset",
]
