"""Data for training and evaluating BRIDGE: the bridge-shapes benchmark, image-caption loading, the collator."""

from .collator import BridgeDataCollator
from .loading import load_image_text_dataset
from .nlvr2 import NLVR2_FEATURES, Nlvr2DataCollator, load_bridge_shapes_nlvr2, load_nlvr2
from .sampling import twin_adjacent_order
from .shapes import (
    SHAPES_BACKGROUND,
    SHAPES_COLORS,
    SHAPES_FAMILIES,
    SHAPES_NAMES,
    SHAPES_RELATIONS,
    TWIN_KINDS,
    ShapesCaption,
    held_out_families,
    is_held_out_binding,
    load_bridge_shapes,
    load_bridge_shapes_twins,
    parse_shapes_caption,
    shapes_cell_labels,
    swapped_scene,
)
from .vqa import VQA_FEATURES, VqaDataCollator, answer_vocabulary, load_bridge_shapes_vqa, load_vqav2, vqa_soft_targets


__all__ = [
    "SHAPES_BACKGROUND",
    "SHAPES_COLORS",
    "SHAPES_FAMILIES",
    "SHAPES_NAMES",
    "SHAPES_RELATIONS",
    "BridgeDataCollator",
    "ShapesCaption",
    "held_out_families",
    "is_held_out_binding",
    "load_bridge_shapes",
    "load_bridge_shapes_twins",
    "swapped_scene",
    "TWIN_KINDS",
    "load_image_text_dataset",
    "parse_shapes_caption",
    "shapes_cell_labels",
    "twin_adjacent_order",
    "VQA_FEATURES",
    "VqaDataCollator",
    "load_bridge_shapes_vqa",
    "load_vqav2",
    "answer_vocabulary",
    "vqa_soft_targets",
    "NLVR2_FEATURES",
    "Nlvr2DataCollator",
    "load_bridge_shapes_nlvr2",
    "load_nlvr2",
]
