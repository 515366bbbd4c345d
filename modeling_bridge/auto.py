"""Auto classes for the tasks transformers has none for: image-text retrieval and visual reasoning (NLVR2).

They behave as transformers' own Auto classes (`from_pretrained`, `from_config`, `register`, `trust_remote_code`
with the saved `auto_map`), with a mapping that starts empty: importing `modeling_bridge` registers BRIDGE's heads.
Where the package is not installed, the Hub code of a saved folder still holds the classes
(`transformers.dynamic_module_utils.get_class_from_dynamic_module("modeling_bridge.BridgeForImageTextRetrieval",
repo)`).
"""

from collections import OrderedDict

from transformers.models.auto.auto_factory import _BaseAutoModelClass, _LazyAutoMapping


class AutoModelForImageTextRetrieval(_BaseAutoModelClass):
    """Image-text matching and search models (`BridgeForImageTextRetrieval`)."""

    _model_mapping = _LazyAutoMapping(OrderedDict(), OrderedDict())


class AutoModelForVisualReasoning(_BaseAutoModelClass):
    """Statements about several images, true or false (`BridgeForVisualReasoning`, NLVR2)."""

    _model_mapping = _LazyAutoMapping(OrderedDict(), OrderedDict())


__all__ = ["AutoModelForImageTextRetrieval", "AutoModelForVisualReasoning"]
