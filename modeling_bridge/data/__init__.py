"""Data for training and evaluating BRIDGE: the bridge-shapes benchmark, image-caption loading, the collator."""

from .collator import BridgeDataCollator
from .loading import load_image_text_dataset
from .sampling import twin_adjacent_order
from .shapes import (
    SHAPES_BACKGROUND,
    SHAPES_COLORS,
    SHAPES_FAMILIES,
    SHAPES_NAMES,
    SHAPES_RELATIONS,
    ShapesCaption,
    held_out_families,
    is_held_out_binding,
    load_bridge_shapes,
    parse_shapes_caption,
    shapes_cell_labels,
)


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
    "load_image_text_dataset",
    "parse_shapes_caption",
    "shapes_cell_labels",
    "twin_adjacent_order",
]
