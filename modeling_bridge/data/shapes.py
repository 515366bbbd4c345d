"""bridge-shapes: a deterministic synthetic dataset that tests attribute binding, built offline in seconds.

Each image shows one or two filled shapes on a dark background; its caption binds colours to shapes and states
their spatial relation: "a red circle left of a blue square", "a green triangle above a purple diamond",
"a yellow square" (one shape, train split only).

Vocabulary: 6 colours (`SHAPES_COLORS`) x 4 shapes (`SHAPES_NAMES`), relations "left of" and "above" (the
first-mentioned object is the left / top one).

What is held out
----------------
A *family* is an unordered pair of distinct shapes plus an unordered pair of distinct colours, e.g.
{circle, square} x {red, blue}: 6 shape pairs x 15 colour pairs = 90 families (`SHAPES_FAMILIES`). A family has
two *bindings* (red circle + blue square, or blue circle + red square). A fixed, seeded fraction of the families
(`held_out_fraction`, 20% = 18 families by default, chosen by `split_seed` only) is held out:

- every two-shape scene of a held-out family, in both bindings, both relations and both mention orders, is in
  the test split and nowhere else;
- the train split's two-shape scenes come only from the other families, plus single-shape scenes.

So for every test image, the two coloured objects it shows (e.g. a red circle together with a blue square) never
appear together in any training image, in either binding; each object on its own (a red circle) does appear in
training, alone and next to other objects. Holding out whole families rather than single bindings matters: had
"blue circle + red square" been trained, "red circle + blue square" could be recognised by elimination.

Twins and the test gallery
--------------------------
The attribute-swapped *twin* of a two-shape scene has the same geometry (same shapes at the same positions and
sizes) with the two colours exchanged, e.g. "a blue circle left of a red square". Twins have identical
multisets of words, and so do the two mention orders ("a blue square left of a red circle" is the mirrored
geometry), so the four test captions of one family and relation share one bag of words: a bag-of-words matcher
is at chance on them (Winoground/ARO style).

The test split holds exactly one scene per (held-out family, binding, relation, mention order): 8 per family,
every caption distinct, each scene's twin in the split (`twin` column, symmetric). The train split holds
`num_train` scenes: single-shape scenes (`single_fraction`) and two-shape scenes sampled with jitter from the
train families in twin pairs (both members in train, `twin` set), so that training can use twins as hard
negatives. Nothing about the test split depends on `num_train` or `seed`.

Columns: `image` (`datasets.Image`, RGB PNG), `caption`, `label` (a `ClassLabel` per split whose names are the
split's possible captions: for test, the 8 x held-out-families captions of the gallery, so zero-shot
classification of a test image = picking its caption among `features["label"].names`), `twin` (row index of the
twin in the same split, -1 for single shapes), `family` (index into `SHAPES_FAMILIES`, -1 for single shapes),
`binding` (0/1, -1 for singles), `relation` ("left of" / "above" / "none"), and `colors`, `shapes`, `boxes`
(inclusive pixel boxes `[x0, y0, x1, y1]`) of the objects in mention order.

Determinism: all randomness comes from `numpy.random.Generator`s seeded from (`seed`, `split_seed`); the same
arguments give byte-identical images and identical rows.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, List, Value
from PIL import Image as PILImage
from PIL import ImageDraw


SHAPES_COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 25, 25),
    "green": (25, 200, 40),
    "blue": (40, 80, 245),
    "yellow": (245, 225, 20),
    "purple": (155, 40, 210),
    "orange": (255, 135, 0),
}
SHAPES_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
SHAPES_BACKGROUND: tuple[int, int, int] = (20, 20, 20)
SHAPES_RELATIONS: tuple[str, ...] = ("left of", "above")

# Every family as ((shape_a, shape_b), (color_a, color_b)), each pair in vocabulary order.
SHAPES_FAMILIES: tuple[tuple[tuple[str, str], tuple[str, str]], ...] = tuple(
    itertools.product(itertools.combinations(SHAPES_NAMES, 2), itertools.combinations(SHAPES_COLORS, 2))
)
_FAMILY_INDEX = {family: i for i, family in enumerate(SHAPES_FAMILIES)}

_COLOR_RE = "|".join(SHAPES_COLORS)
_SHAPE_RE = "|".join(SHAPES_NAMES)
_OBJECT_RE = rf"an? ({_COLOR_RE}) ({_SHAPE_RE})"
_CAPTION_RE = re.compile(rf"^{_OBJECT_RE}(?: (left of|above) {_OBJECT_RE})?$")


@dataclass(frozen=True)
class ShapesCaption:
    """A parsed bridge-shapes caption; `objects` are (color, shape) in mention order."""

    objects: tuple[tuple[str, str], ...]
    relation: str  # "left of", "above" or "none"

    @property
    def family(self) -> int:
        """Index into `SHAPES_FAMILIES`, -1 for a single shape."""
        if len(self.objects) == 1:
            return -1
        (c1, s1), (c2, s2) = self.objects
        shapes = tuple(sorted((s1, s2), key=SHAPES_NAMES.index))
        colors = tuple(sorted((c1, c2), key=list(SHAPES_COLORS).index))
        return _FAMILY_INDEX[(shapes, colors)]


def parse_shapes_caption(caption: str) -> ShapesCaption:
    """Parse a bridge-shapes caption; raises ValueError for anything the generator cannot produce."""
    match = _CAPTION_RE.match(caption)
    if match is not None:
        c1, s1, relation, c2, s2 = match.groups()
        parsed = (
            ShapesCaption(objects=((c1, s1),), relation="none")
            if relation is None
            else ShapesCaption(objects=((c1, s1), (c2, s2)), relation=relation)
        )
        # Round trip: rejects wrong articles, and pairs that repeat a colour or a shape (never generated).
        if _caption(parsed.objects, parsed.relation) == caption and (relation is None or (c1 != c2 and s1 != s2)):
            return parsed
    raise ValueError(f"{caption!r} is not a bridge-shapes caption (e.g. 'a red circle left of a blue square').")


def held_out_families(split_seed: int = 0, held_out_fraction: float = 0.2) -> frozenset[int]:
    """Indices into `SHAPES_FAMILIES` of the families whose scenes form the test split."""
    if not 0.0 < held_out_fraction < 1.0:
        raise ValueError(f"held_out_fraction must be in (0, 1), got {held_out_fraction}.")
    count = min(max(1, round(held_out_fraction * len(SHAPES_FAMILIES))), len(SHAPES_FAMILIES) - 1)
    rng = np.random.default_rng([split_seed, 0])
    return frozenset(int(i) for i in rng.choice(len(SHAPES_FAMILIES), size=count, replace=False))


def is_held_out_binding(caption: str, split_seed: int = 0, held_out_fraction: float = 0.2) -> bool:
    """Whether the colour-shape combination of `caption` is held out of training (single shapes never are)."""
    family = parse_shapes_caption(caption).family
    return family >= 0 and family in held_out_families(split_seed, held_out_fraction)


def _phrase(color: str, shape: str) -> str:
    # The article goes with the colour, so twins (colours swapped) still have the same multiset of words.
    return f"{'an' if color[0] in 'aeiou' else 'a'} {color} {shape}"


def _caption(objects, relation) -> str:
    first = _phrase(*objects[0])
    return first if relation == "none" else f"{first} {relation} {_phrase(*objects[1])}"


def _scene_objects(family: int, binding: int, order: int):
    """(color, shape) of the first- and second-mentioned object for a family's binding and mention order."""
    (shape_a, shape_b), (color_a, color_b) = SHAPES_FAMILIES[family]
    objects = [(color_a, shape_a), (color_b, shape_b)] if binding == 0 else [(color_b, shape_a), (color_a, shape_b)]
    return objects if order == 0 else objects[::-1]


class _Geometry:
    """Jittered, non-overlapping placements inside an image of side `size`.

    Two-shape scenes put the first object in the left (top) half and the second in the other half, with a
    margin to the midline, so the objects never overlap and each half holds exactly one object. The jitter
    across the relation is at most `r_min + margin` either side of the centre, which keeps the offset along the
    relation (>= 2 r_min + 2 margin + 1) strictly larger than the offset across it: "left of" never looks like
    "above".
    """

    def __init__(self, size: int):
        if size < 32:
            raise ValueError(f"image_size must be at least 32 pixels to draw two separable shapes, got {size}.")
        self.size = size
        self.margin = max(1, size // 32)
        self.r_min, self.r_max = round(0.13 * size), round(0.19 * size)
        self.cross_jitter = min(round(0.15 * size), self.r_min + self.margin)

    def single(self, rng):
        s, m = self.size, self.margin
        r = int(rng.integers(self.r_min, self.r_max + 1))
        cx, cy = (int(v) for v in rng.integers(m + r, s - m - r, size=2))
        return [(cx, cy, r)]

    def pair(self, rng, relation: str):
        s, m, half = self.size, self.margin, self.size // 2
        placed = []
        for side in (0, 1):
            r = int(rng.integers(self.r_min, self.r_max + 1))
            lo, hi = (m + r, half - 1 - m - r) if side == 0 else (half + m + r, s - 1 - m - r)
            along = int(rng.integers(lo, hi + 1))
            across = int(
                rng.integers(max(half - self.cross_jitter, m + r), min(half + self.cross_jitter, s - 1 - m - r) + 1)
            )
            placed.append((along, across, r) if relation == "left of" else (across, along, r))
        return placed


def _box(cx, cy, r):
    return [cx - r, cy - r, cx + r, cy + r]


def _draw(size: int, placements, objects) -> PILImage.Image:
    image = PILImage.new("RGB", (size, size), SHAPES_BACKGROUND)
    draw = ImageDraw.Draw(image)  # no anti-aliasing: every shape pixel has exactly its colour
    for (cx, cy, r), (color, shape) in zip(placements, objects):
        fill = SHAPES_COLORS[color]
        if shape == "circle":
            draw.ellipse(_box(cx, cy, r), fill=fill)
        elif shape == "square":
            h = round(0.85 * r)  # about the circle's area
            draw.rectangle(_box(cx, cy, h), fill=fill)
        elif shape == "triangle":
            draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
        else:  # diamond
            draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    return image


def _row(size, placements, objects, relation, family, binding, twin):
    return {
        "image": _draw(size, placements, objects),
        "caption": _caption(objects, relation),
        "twin": twin,
        "family": family,
        "binding": binding,
        "relation": relation,
        "colors": [c for c, _ in objects],
        "shapes": [s for _, s in objects],
        "boxes": [_box(*p) for p in placements],
    }


def _all_captions(families, singles: bool) -> list[str]:
    """Every caption a split can contain, in a fixed order (the split's ClassLabel names)."""
    captions = [_caption([(c, s)], "none") for s in SHAPES_NAMES for c in SHAPES_COLORS] if singles else []
    for family in sorted(families):
        for relation in SHAPES_RELATIONS:
            for order in (0, 1):
                for binding in (0, 1):
                    captions.append(_caption(_scene_objects(family, binding, order), relation))
    return captions


def _features(names: list[str]) -> Features:
    return Features(
        {
            "image": Image(),
            "caption": Value("string"),
            "label": ClassLabel(names=names),
            "twin": Value("int64"),
            "family": Value("int64"),
            "binding": Value("int64"),
            "relation": Value("string"),
            "colors": List(Value("string")),
            "shapes": List(Value("string")),
            "boxes": List(List(Value("int32"))),
        }
    )


def _to_dataset(rows: list[dict], names: list[str]) -> Dataset:
    label_of = {name: i for i, name in enumerate(names)}
    columns = {
        key: [label_of[row["caption"]] for row in rows] if key == "label" else [row[key] for row in rows]
        for key in _features(names)
    }
    return Dataset.from_dict(columns, features=_features(names))


def load_bridge_shapes(
    num_train: int = 4000,
    image_size: int = 64,
    seed: int = 0,
    split_seed: int = 0,
    held_out_fraction: float = 0.2,
    single_fraction: float = 0.15,
) -> DatasetDict:
    """Build bridge-shapes (see the module docstring) as a `DatasetDict` with "train" and "test" splits.

    Args:
        num_train: rows in the train split. About `single_fraction` of them are single shapes; the rest are
            twin pairs, so the count of single shapes is adjusted by one when needed to make the rest even.
        image_size: side of the square RGB images, in pixels (>= 32).
        seed: seeds the train split's sampling (families, relations, jitter, row order).
        split_seed: seeds which families are held out and the test split's jitter; the test split depends on
            `split_seed`, `held_out_fraction` and `image_size` only.
        held_out_fraction: fraction of the 90 families held out for test.
        single_fraction: fraction of single-shape scenes in train.
    """
    if num_train < 0:
        raise ValueError(f"num_train must be >= 0, got {num_train}.")
    if not 0.0 <= single_fraction <= 1.0:
        raise ValueError(f"single_fraction must be in [0, 1], got {single_fraction}.")
    geometry = _Geometry(image_size)
    test_families = held_out_families(split_seed, held_out_fraction)
    train_families = sorted(set(range(len(SHAPES_FAMILIES))) - test_families)

    # Test: one geometry per (family, relation, order), drawn in both bindings; twins are adjacent rows.
    rng = np.random.default_rng([split_seed, 1])
    test_rows = []
    for family in sorted(test_families):
        for relation in SHAPES_RELATIONS:
            for order in (0, 1):
                placements = geometry.pair(rng, relation)
                for binding in (0, 1):
                    test_rows.append(
                        _row(
                            image_size,
                            placements,
                            _scene_objects(family, binding, order),
                            relation,
                            family,
                            binding,
                            twin=len(test_rows) ^ 1,
                        )
                    )

    # Train: singles plus twin pairs from the train families, then one shuffle of the row order.
    rng = np.random.default_rng([seed, 2])
    num_single = round(single_fraction * num_train)
    if (num_train - num_single) % 2:
        num_single += 1 if num_single < num_train else -1
    scenes = []
    for _ in range(num_single):
        color = list(SHAPES_COLORS)[rng.integers(len(SHAPES_COLORS))]
        shape = SHAPES_NAMES[rng.integers(len(SHAPES_NAMES))]
        scenes.append([(geometry.single(rng), [(color, shape)], "none", -1, -1)])
    for _ in range((num_train - num_single) // 2):
        family = train_families[rng.integers(len(train_families))]
        relation = SHAPES_RELATIONS[rng.integers(2)]
        order = int(rng.integers(2))
        placements = geometry.pair(rng, relation)
        scenes.append([(placements, _scene_objects(family, b, order), relation, family, b) for b in (0, 1)])
    position = rng.permutation(num_train)  # row of the k-th generated scene
    flat = [scene for group in scenes for scene in group]
    twin_of = {}
    k = num_single
    for _ in scenes[num_single:]:
        twin_of[k], twin_of[k + 1] = k + 1, k
        k += 2
    train_rows = [None] * num_train
    for k, (placements, objects, relation, family, binding) in enumerate(flat):
        twin = int(position[twin_of[k]]) if k in twin_of else -1
        train_rows[position[k]] = _row(image_size, placements, objects, relation, family, binding, twin)

    return DatasetDict(
        {
            "train": _to_dataset(train_rows, _all_captions(train_families, singles=True)),
            "test": _to_dataset(test_rows, _all_captions(test_families, singles=False)),
        }
    )


TWIN_KINDS = ("colour", "shape", "relation")


def swapped_scene(row: dict, kind: str) -> tuple[PILImage.Image, str]:
    """The `kind` twin of a two-shape scene (a row of `load_bridge_shapes`), drawn at the row's own placements, and its
    caption: "colour" exchanges the two colours (the row's `twin`), "shape" the two shapes, "relation" the two objects'
    places (so "a red circle left of a blue square" becomes "a blue square left of a red circle"). Each twin's caption
    has the row caption's multiset of words: a bag-of-words matcher cannot tell them apart."""
    if kind not in TWIN_KINDS:
        raise ValueError(f"kind must be one of {TWIN_KINDS}, got {kind!r}.")
    if row["relation"] == "none":
        raise ValueError(f"{row['caption']!r} shows one shape: only two-shape scenes have twins.")
    placements = [((x0 + x1) // 2, (y0 + y1) // 2, (x1 - x0) // 2) for x0, y0, x1, y1 in row["boxes"]]
    (color_1, color_2), (shape_1, shape_2) = row["colors"], row["shapes"]
    objects = {
        "colour": [(color_2, shape_1), (color_1, shape_2)],
        "shape": [(color_1, shape_2), (color_2, shape_1)],
        "relation": [(color_2, shape_2), (color_1, shape_1)],  # the object drawn first is mentioned first
    }[kind]
    return _draw(row["image"].size[0], placements, objects), _caption(objects, row["relation"])


def load_bridge_shapes_twins(split: Dataset, kind: str) -> Dataset:
    """Winoground-style pairs of one twin kind from a split of `load_bridge_shapes` (e.g. the held-out test split):
    columns `image`, `caption` (a scene of the split), `twin_image`, `twin_caption` (its `swapped_scene`). "colour"
    pairs the split's own twins (each pair once); "shape" and "relation" pair each two-shape scene with its twin,
    drawn here."""
    rows = [row for row in split if row["relation"] != "none"]
    if kind == "colour":
        indices = [i for i, twin in enumerate(split["twin"]) if 0 <= i < twin]
        rows = [split[i] for i in indices]
    twins = [swapped_scene(row, kind) for row in rows]
    return Dataset.from_dict(
        {
            "image": [row["image"] for row in rows],
            "caption": [row["caption"] for row in rows],
            "twin_image": [image for image, _ in twins],
            "twin_caption": [caption for _, caption in twins],
        },
        features=Features(
            {"image": Image(), "caption": Value("string"), "twin_image": Image(), "twin_caption": Value("string")}
        ),
    )


def shapes_cell_labels(boxes, colors, shapes, image_size: int, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell targets of a bridge-shapes scene on a `grid` x `grid` map (e.g. a vision tower's feature map):
    the colour index (into `SHAPES_COLORS`) and shape index (into `SHAPES_NAMES`) of the object whose box holds the
    cell's centre, -1 where none does (background). Row-major (grid, grid) int64 arrays; for pre-training or probing
    a tower on what is where."""
    if grid < 1 or image_size % grid:
        raise ValueError(f"grid must be a positive divisor of image_size={image_size}, got {grid}.")
    cell = image_size // grid
    centres = np.arange(grid) * cell + (cell - 1) / 2
    color_map, shape_map = np.full((grid, grid), -1), np.full((grid, grid), -1)
    color_names, shape_names = list(SHAPES_COLORS), list(SHAPES_NAMES)
    for (x0, y0, x1, y1), color, shape in zip(boxes, colors, shapes):
        inside = (
            (centres[:, None] >= y0) & (centres[:, None] <= y1) & (centres[None, :] >= x0) & (centres[None, :] <= x1)
        )
        color_map[inside], shape_map[inside] = color_names.index(color), shape_names.index(shape)
    return color_map, shape_map


__all__ = [
    "SHAPES_BACKGROUND",
    "SHAPES_COLORS",
    "SHAPES_FAMILIES",
    "SHAPES_NAMES",
    "SHAPES_RELATIONS",
    "TWIN_KINDS",
    "ShapesCaption",
    "held_out_families",
    "is_held_out_binding",
    "load_bridge_shapes",
    "load_bridge_shapes_twins",
    "parse_shapes_caption",
    "shapes_cell_labels",
    "swapped_scene",
]
