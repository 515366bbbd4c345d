"""bridge-shapes, image-caption loading and the data collator: behaviour on real (tiny) data, no network."""

import json
from collections import Counter

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Image
from PIL import Image as PILImage
from transformers import BertConfig, BertTokenizer, SiglipVisionConfig, ViTConfig, ViTImageProcessor

from modeling_bridge import BridgeConfig, BridgeProcessor
from modeling_bridge.data import (
    SHAPES_BACKGROUND,
    SHAPES_COLORS,
    SHAPES_FAMILIES,
    SHAPES_NAMES,
    TWIN_KINDS,
    BridgeDataCollator,
    held_out_families,
    is_held_out_binding,
    load_bridge_shapes,
    load_bridge_shapes_twins,
    load_image_text_dataset,
    parse_shapes_caption,
    swapped_scene,
)
from modeling_bridge.data.collator import num_patch_tokens


NUM_TRAIN = 300
SIZE = 48
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "an", "left", "of", "above", *SHAPES_COLORS, *SHAPES_NAMES]


@pytest.fixture(scope="module")
def shapes():
    return load_bridge_shapes(num_train=NUM_TRAIN, image_size=SIZE, seed=3)


@pytest.fixture
def shapes_processor():
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)}, model_max_length=12)
    image_processor = ViTImageProcessor(size={"height": 16, "width": 16})
    return BridgeProcessor(image_processor=image_processor, tokenizer=tokenizer)


def _png_bytes(split):
    return [row["bytes"] for row in split.cast_column("image", Image(decode=False))["image"]]


def _pixels(row):
    return np.asarray(row["image"])


# ---------------------------------------------------------------- bridge-shapes


def test_shapes_is_deterministic_and_seeded():
    a = load_bridge_shapes(num_train=60, image_size=SIZE, seed=1)
    b = load_bridge_shapes(num_train=60, image_size=SIZE, seed=1)
    c = load_bridge_shapes(num_train=60, image_size=SIZE, seed=2)
    for split in ("train", "test"):
        assert _png_bytes(a[split]) == _png_bytes(b[split])
        assert a[split].remove_columns("image").to_list() == b[split].remove_columns("image").to_list()
    assert _png_bytes(a["train"]) != _png_bytes(c["train"])
    # The test split depends on split_seed only: training seeds are compared on the same gallery.
    assert _png_bytes(a["test"]) == _png_bytes(c["test"])
    assert a["test"]["caption"] == c["test"]["caption"]


def test_shapes_schema_and_sizes(shapes):
    assert isinstance(shapes, DatasetDict) and set(shapes) == {"train", "test"}
    for split in shapes.values():
        assert isinstance(split.features["image"], Image)
        assert isinstance(split.features["label"], ClassLabel)
        image = split[0]["image"]
        assert image.mode == "RGB" and image.size == (SIZE, SIZE)
    held_out = held_out_families()
    assert len(held_out) == round(0.2 * len(SHAPES_FAMILIES)) == 18
    assert shapes["train"].num_rows == NUM_TRAIN
    assert shapes["test"].num_rows == 8 * len(held_out)  # binding x relation x order per family
    singles = shapes["train"]["relation"].count("none")
    assert abs(singles - 0.15 * NUM_TRAIN) <= 1 and "none" not in shapes["test"]["relation"]


def test_held_out_bindings_never_occur_in_train(shapes):
    held_out = held_out_families()
    test_families = {parse_shapes_caption(c).family for c in shapes["test"]["caption"]}
    assert test_families == held_out
    train_two = [c for c in shapes["train"]["caption"] if " of " in c or " above " in c]
    assert train_two and not any(is_held_out_binding(c) for c in train_two)
    assert all(is_held_out_binding(c) for c in shapes["test"]["caption"])
    # Spelled out: no pair of coloured objects shown together in a test image is ever shown together in train.
    pairs = lambda caps: {frozenset(parse_shapes_caption(c).objects) for c in caps if " a" in c[2:]}  # noqa: E731
    assert not pairs(shapes["test"]["caption"]) & pairs(shapes["train"]["caption"])
    # ...while each object of a test image is seen in training (the test is about binding, not new words).
    seen = {obj for c in shapes["train"]["caption"] for obj in parse_shapes_caption(c).objects}
    assert {obj for c in shapes["test"]["caption"] for obj in parse_shapes_caption(c).objects} <= seen
    # The stored family column agrees with the caption.
    for split in shapes.values():
        assert split["family"] == [parse_shapes_caption(c).family for c in split["caption"]]


def test_test_split_is_one_scene_per_combination_with_twins(shapes):
    test = shapes["test"]
    keys = Counter((row["family"], row["binding"], row["relation"], row["shapes"][0]) for row in test)
    assert set(keys.values()) == {1} and len(keys) == 8 * len(held_out_families())
    assert len(set(test["caption"])) == test.num_rows


@pytest.mark.parametrize("split", ["train", "test"])
def test_twins_swap_colours_on_the_same_geometry(shapes, split):
    data = shapes[split]
    rows = data.to_list()
    twins = [(i, row["twin"]) for i, row in enumerate(rows) if row["twin"] != -1]
    assert len(twins) == data.num_rows - data["relation"].count("none") > 0
    background = np.array(SHAPES_BACKGROUND)
    for i, j in twins:
        a, b = rows[i], rows[j]
        assert rows[j]["twin"] == i and j != i  # symmetric
        assert a["shapes"] == b["shapes"] and a["boxes"] == b["boxes"] and a["relation"] == b["relation"]
        assert a["colors"] == b["colors"][::-1] and a["family"] == b["family"] and a["binding"] != b["binding"]
        assert a["caption"] != b["caption"] and sorted(a["caption"].split()) == sorted(b["caption"].split())
        pa, pb = _pixels(data[i]), _pixels(data[j])
        assert np.array_equal((pa != background).any(-1), (pb != background).any(-1))  # same shapes, same place
        assert not np.array_equal(pa, pb)


def test_the_three_twin_kinds_keep_the_words_and_change_what_they_say(shapes):
    test = shapes["test"]
    rows = test.to_list()
    for i, row in enumerate(rows[:24]):
        row["image"] = test[i]["image"]
        colour_image, colour_caption = swapped_scene(row, "colour")  # the split's own twin, redrawn identically
        assert colour_caption == rows[row["twin"]]["caption"]
        assert np.array_equal(np.asarray(colour_image), _pixels(test[row["twin"]]))
        pixels = _pixels(test[i])
        for kind in ("shape", "relation"):
            image, caption = swapped_scene(row, kind)
            assert caption != row["caption"] and sorted(caption.split()) == sorted(row["caption"].split())
            twin = np.asarray(image)
            assert twin.shape == pixels.shape and not np.array_equal(twin, pixels)
            parsed = parse_shapes_caption(caption)
            assert parsed.relation == row["relation"]
            first, second = parsed.objects
            if kind == "shape":  # same colours at the same places, the shapes exchanged
                assert [o[0] for o in parsed.objects] == row["colors"] and [first[1], second[1]] == row["shapes"][::-1]
                for colour, box in zip(row["colors"], row["boxes"]):
                    x0, y0, x1, y1 = box
                    assert _colour_pixels(twin[y0 : y1 + 1, x0 : x1 + 1], colour) > 0
            else:  # the two objects exchange places: the one mentioned first is now the other one
                assert list(parsed.objects) == list(zip(row["colors"], row["shapes"]))[::-1]
                x0, y0, x1, y1 = row["boxes"][0]
                assert _colour_pixels(twin[y0 : y1 + 1, x0 : x1 + 1], row["colors"][1]) > 0
                assert _colour_pixels(twin[y0 : y1 + 1, x0 : x1 + 1], row["colors"][0]) == 0
    with pytest.raises(ValueError, match="kind must be one of"):
        swapped_scene(rows[0] | {"image": test[0]["image"]}, "size")
    pairs = {kind: load_bridge_shapes_twins(test, kind) for kind in TWIN_KINDS}
    assert pairs["colour"].num_rows == test.num_rows // 2
    assert pairs["shape"].num_rows == pairs["relation"].num_rows == test.num_rows
    assert pairs["shape"][0]["caption"] == test[0]["caption"]


def test_labels_name_the_captions(shapes):
    for split in shapes.values():
        names = split.features["label"].names
        assert len(names) == len(set(names))
        assert [names[label] for label in split["label"]] == split["caption"]
    # Zero-shot on test picks among the gallery's captions only: each image's twin is one of the candidates.
    assert sorted(shapes["test"].features["label"].names) == sorted(shapes["test"]["caption"])


def _colour_pixels(pixels, colour):
    return int((pixels == np.array(SHAPES_COLORS[colour])).all(-1).sum())


def test_images_show_the_stated_colours_on_the_stated_sides(shapes):
    half = SIZE // 2
    checked = Counter()
    for split in shapes.values():
        for row in split.select(range(min(120, split.num_rows))):
            pixels = _pixels(row)
            if row["relation"] == "none":
                assert _colour_pixels(pixels, row["colors"][0]) > 20
                continue
            first, second = (
                (pixels[:, :half], pixels[:, half:])
                if row["relation"] == "left of"
                else (pixels[:half], pixels[half:])
            )
            c1, c2 = row["colors"]
            assert _colour_pixels(first, c1) > 20 and _colour_pixels(first, c2) == 0, row["caption"]
            assert _colour_pixels(second, c2) > 20 and _colour_pixels(second, c1) == 0, row["caption"]
            assert _colour_pixels(pixels, c1) + _colour_pixels(pixels, c2) == int(
                (pixels != np.array(SHAPES_BACKGROUND)).any(-1).sum()
            )  # nothing else is drawn
            checked[row["relation"]] += 1
    assert checked["left of"] > 10 and checked["above"] > 10


def test_shape_pixels_tell_the_shapes_apart(shapes):
    # Within its tight box a square fills ~100%, a circle ~79%, a triangle and a diamond ~50%; a triangle has a
    # flat base and a pointed top, a diamond is pointed at both ends. The caption's shape is what is drawn.
    for row in shapes["test"].select(range(16)):
        pixels = _pixels(row)
        for colour, shape, (x0, y0, x1, y1) in zip(row["colors"], row["shapes"], row["boxes"]):
            mask = (pixels == np.array(SHAPES_COLORS[colour])).all(-1)
            ys, xs = np.nonzero(mask)
            assert x0 <= xs.min() and xs.max() <= x1 and y0 <= ys.min() and ys.max() <= y1
            width, height = np.ptp(xs) + 1, np.ptp(ys) + 1
            fill = mask.sum() / (width * height)
            top, bottom = mask[ys.min()].sum(), mask[ys.max()].sum()
            expected = {
                "square": fill > 0.97,
                "circle": 0.7 < fill < 0.9,
                "triangle": 0.4 < fill < 0.65 and top <= 3 and bottom > 0.8 * width,
                "diamond": 0.4 < fill < 0.65 and top <= 3 and bottom <= 3,
            }
            assert [name for name, ok in expected.items() if ok] == [shape], (row["caption"], shape, fill)


def test_caption_parsing_rejects_foreign_captions():
    assert parse_shapes_caption("an orange circle above a red square").objects == (
        ("orange", "circle"),
        ("red", "square"),
    )
    for bad in (
        "a orange circle",
        "a red circle left of a red square",
        "a red circle right of a blue square",
        "a pink circle",
        "",
    ):
        with pytest.raises(ValueError, match="not a bridge-shapes caption"):
            parse_shapes_caption(bad)


def test_shapes_rejects_bad_arguments():
    with pytest.raises(ValueError, match="image_size must be at least 32"):
        load_bridge_shapes(num_train=2, image_size=31)
    small = load_bridge_shapes(num_train=7, image_size=32, single_fraction=0.0)
    # An odd count cannot be all twin pairs: one single shape makes up the difference.
    assert small["train"].num_rows == 7 and small["train"]["twin"].count(-1) == 1
    with pytest.raises(ValueError, match="held_out_fraction"):
        load_bridge_shapes(num_train=2, held_out_fraction=1.0)


# ---------------------------------------------------------------- loading


def _write_png(path, colour, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.new(mode, (20, 16), colour).save(path)


@pytest.fixture
def karpathy(tmp_path):
    _write_png(tmp_path / "images" / "a.png", (255, 0, 0))
    _write_png(tmp_path / "images" / "b.png", 128, mode="L")
    _write_png(tmp_path / "images" / "c.png", (0, 0, 255, 255), mode="RGBA")
    train = [
        {"image": "a.png", "caption": "a red thing", "image_id": "x"},
        {"image": "a.png", "caption": "red again", "image_id": "x"},
        {"image": "b.png", "caption": "a grey thing", "image_id": "y"},
    ]
    test = [
        {"image": "c.png", "caption": ["blue one", "blue two", "blue three"]},
        {"image": "a.png", "caption": ["red one"]},
    ]
    (tmp_path / "train.json").write_text(json.dumps(train))
    (tmp_path / "test.json").write_text(json.dumps(test))
    return tmp_path


def test_karpathy_json_one_row_per_caption(karpathy):
    train = load_image_text_dataset(karpathy / "train.json", image_root=karpathy / "images")
    assert train.column_names == ["image", "caption", "image_id"]
    assert train["caption"] == ["a red thing", "red again", "a grey thing"]
    assert train["image_id"] == [0, 0, 1]  # the same file twice is one image
    assert all(row["image"].mode == "RGB" for row in train)  # grayscale converted
    assert train[2]["image"].getpixel((0, 0)) == (128, 128, 128)

    splits = load_image_text_dataset(
        {"train": karpathy / "train.json", "test": karpathy / "test.json"}, image_root=karpathy / "images"
    )
    test = splits["test"]
    assert test["caption"] == ["blue one", "blue two", "blue three", "red one"]
    assert test["image_id"] == [0, 0, 0, 1]
    assert test[1]["image"].mode == "RGB" and test[1]["image"].getpixel((3, 3)) == (0, 0, 255)
    assert test[3]["image"].getpixel((3, 3)) == (255, 0, 0)


def test_karpathy_missing_file_names_it_or_is_skipped_and_counted(karpathy):
    entries = json.loads((karpathy / "test.json").read_text())
    entries.insert(1, {"image": "gone.png", "caption": ["lost 1", "lost 2"]})
    (karpathy / "broken.png").write_bytes(b"not a png")
    entries.append({"image": "../broken.png", "caption": "broken"})
    entries.append({"image": "a.png", "caption": "  "})
    (karpathy / "bad.json").write_text(json.dumps(entries))

    with pytest.raises(ValueError, match=r"4 invalid row.*gone\.png: file not found") as error:
        load_image_text_dataset(karpathy / "bad.json", image_root=karpathy / "images")
    assert "broken.png: unreadable image" in str(error.value)
    assert "row 7 (source entry 4): empty caption '  '" in str(error.value)

    with pytest.warns(UserWarning, match=r"skipped 4 of 8 rows.*gone\.png"):
        clean = load_image_text_dataset(karpathy / "bad.json", image_root=karpathy / "images", skip_invalid=True)
    assert clean["caption"] == ["blue one", "blue two", "blue three", "red one"]
    assert clean["image_id"] == [0, 0, 0, 1]  # contiguous again after dropping gone.png's captions
    assert [row["image"].size for row in clean] == [(20, 16)] * 4


def test_karpathy_missing_key_names_entry(karpathy):
    (karpathy / "keys.json").write_text(json.dumps([{"image": "a.png", "caption": "ok"}, {"img": "b.png"}]))
    with pytest.raises(ValueError, match=r"entry 1 has no 'image' key; its keys are \['img'\]"):
        load_image_text_dataset(karpathy / "keys.json")


def test_image_verification_shows_progress_unless_disabled(karpathy, capsys):
    import datasets

    load_image_text_dataset(karpathy / "train.json", image_root=karpathy / "images")
    shown = capsys.readouterr().err.replace("\r", "\n")
    assert f"Verifying the images of the {karpathy / 'train.json'}: 100%" in shown
    assert "| 2/2 [" in shown  # 3 rows, 2 distinct images; the bar is closed at 2 of 2
    load_image_text_dataset(karpathy / "train.json", image_root=karpathy / "images", show_progress=False)
    assert capsys.readouterr().err == ""
    datasets.disable_progress_bars()
    try:
        load_image_text_dataset(karpathy / "train.json", image_root=karpathy / "images")
    finally:
        datasets.enable_progress_bars()
    assert capsys.readouterr().err == ""
    load_image_text_dataset(karpathy / "train.json", image_root=karpathy / "images", verify_images=False)
    assert "Verifying" not in capsys.readouterr().err  # nothing verified, no bar for it


def test_datasets_input_with_named_columns_and_list_captions(tmp_path):
    images = [PILImage.new("L", (8, 8), i * 40) for i in range(3)]
    data = Dataset.from_dict({"img": images, "texts": [["zero"], ["one a", "one b"], ["two"]], "extra": [1, 2, 3]})
    out = load_image_text_dataset(data, image_column="img", text_column="texts")
    assert out.column_names == ["image", "caption", "image_id"]
    assert out["caption"] == ["zero", "one a", "one b", "two"] and out["image_id"] == [0, 1, 1, 2]
    assert [row["image"].getpixel((0, 0)) for row in out] == [(0, 0, 0), (40, 40, 40), (40, 40, 40), (80, 80, 80)]

    # A saved DatasetDict read back from disk, one split selected.
    DatasetDict({"train": data}).save_to_disk(tmp_path / "saved")
    train = load_image_text_dataset(tmp_path / "saved", image_column="img", text_column="texts", split="train")
    assert train["caption"] == out["caption"]


def test_imagefolder_path(tmp_path):
    for name, colour in (("a.png", (255, 0, 0)), ("b.png", (0, 255, 0))):
        _write_png(tmp_path / "folder" / name, colour)
    (tmp_path / "folder" / "metadata.jsonl").write_text(
        '{"file_name": "a.png", "text": "red"}\n{"file_name": "b.png", "text": "green"}\n'
    )
    data = load_image_text_dataset(tmp_path / "folder", text_column="text", split="train")
    assert sorted(data["caption"]) == ["green", "red"]
    colours = {row["caption"]: row["image"].getpixel((0, 0)) for row in data}
    assert colours == {"red": (255, 0, 0), "green": (0, 255, 0)}


def test_wrong_column_names_are_named():
    data = Dataset.from_dict({"picture": [PILImage.new("RGB", (4, 4))], "text": ["x"]})
    with pytest.raises(ValueError, match=r"no image column 'image'; its columns are \['picture', 'text'\]"):
        load_image_text_dataset(data)
    with pytest.raises(ValueError, match=r"no text column 'caption'; its columns are \['picture', 'text'\]"):
        load_image_text_dataset(DatasetDict({"train": data}), image_column="picture")
    with pytest.raises(ValueError, match=r"split 'validation' not found; the dataset has splits \['train'\]"):
        load_image_text_dataset(
            DatasetDict({"train": data}), image_column="picture", text_column="text", split="validation"
        )


def test_datasets_input_empty_caption_and_corrupt_bytes():
    good = PILImage.new("RGB", (4, 4))
    data = Dataset.from_dict({"image": [good, good, good], "caption": ["fine", "", None]})
    with pytest.raises(ValueError, match=r"2 invalid row.*row 1: empty caption ''.*row 2: empty caption None"):
        load_image_text_dataset(data)
    corrupt = Dataset.from_dict(
        {"image": [{"bytes": b"garbage", "path": None}], "caption": ["x"]},
    ).cast_column("image", Image(decode=False))
    with pytest.raises(ValueError, match=r"row 0: unreadable image"):
        load_image_text_dataset(corrupt)
    with pytest.warns(UserWarning, match="skipped 1 of 1 rows"):
        assert load_image_text_dataset(corrupt, skip_invalid=True).num_rows == 0


# ---------------------------------------------------------------- collator


def _rows(captions, mode="RGB"):
    return [
        {"image": PILImage.new(mode, (24, 20), 90 if mode == "L" else (10, 20, 30)), "caption": c} for c in captions
    ]


def test_collator_shapes_and_dtypes(shapes, shapes_processor):
    collator = BridgeDataCollator(shapes_processor)
    rows = [shapes["train"][i] for i in range(5)]  # real dataset rows, extra columns included
    batch = collator(rows)
    assert set(batch) == {"pixel_values", "input_ids", "attention_mask", "token_type_ids"}
    assert batch["pixel_values"].shape == (5, 3, 16, 16) and batch["pixel_values"].dtype == torch.float32
    lengths = [len(shapes_processor.tokenizer(row["caption"])["input_ids"]) for row in rows]
    assert batch["input_ids"].shape == (5, max(lengths)) and batch["input_ids"].dtype == torch.long
    assert batch["attention_mask"].sum(1).tolist() == lengths  # padded to the longest, not further
    assert "[UNK]" not in shapes_processor.tokenizer.convert_ids_to_tokens(batch["input_ids"].flatten().tolist())
    # Non-RGB images are converted.
    gray = collator(_rows(["a red circle"], mode="L"))
    assert gray["pixel_values"].shape == (1, 3, 16, 16)
    assert torch.equal(gray["pixel_values"][0, 0], gray["pixel_values"][0, 2])


def test_collator_mlm_masks_only_real_tokens(shapes_processor):
    captions = ["a red circle", "a blue square left of an orange circle", "a green diamond above a red triangle"]
    collator = BridgeDataCollator(shapes_processor, mlm_probability=0.3)
    tokenizer = shapes_processor.tokenizer
    special_ids = set(tokenizer.all_special_ids)
    torch.manual_seed(0)
    replaced = Counter()
    for _ in range(200):
        batch = collator(_rows(captions))
        ids, masked, labels = batch["input_ids"], batch["mlm_input_ids"], batch["mlm_labels"]
        chosen = labels != -100
        assert chosen.any(1).all()  # at least one per row, even for the 5-token caption
        assert torch.equal(labels[chosen], ids[chosen])  # labels are the original ids exactly where chosen
        assert torch.equal(masked[~chosen], ids[~chosen])  # nothing else is touched
        is_special = torch.tensor([[t in special_ids for t in row] for row in ids.tolist()])
        assert not (chosen & is_special).any() and not (chosen & (batch["attention_mask"] == 0)).any()
        replaced["mask"] += int((masked[chosen] == tokenizer.mask_token_id).sum())
        replaced["same"] += int((masked[chosen] == ids[chosen]).sum())
        replaced["total"] += int(chosen.sum())
    # BERT's 80/10/10 (random replacements can hit the original id, so "same" is slightly above 10%).
    assert 0.75 < replaced["mask"] / replaced["total"] < 0.85
    assert 0.07 < replaced["same"] / replaced["total"] < 0.16
    # About 30% of real tokens are chosen: 3 + 8 + 8 = 19 real tokens per batch.
    assert 0.25 < replaced["total"] / (200 * 19) < 0.38


def test_collator_is_reproducible_under_torch_seed(shapes_processor):
    collator = BridgeDataCollator(shapes_processor, mlm_probability=0.5, mim_probability=0.25, num_patches=16)
    rows = _rows(["a red circle left of a blue square"] * 4)
    torch.manual_seed(7)
    first = collator(rows)
    torch.manual_seed(7)
    second = collator(rows)
    third = collator(rows)
    for key in ("mlm_input_ids", "mlm_labels", "mim_mask"):
        assert torch.equal(first[key], second[key])
    assert not all(torch.equal(first[k], third[k]) for k in ("mlm_labels", "mim_mask"))


def test_collator_mim_mask_exact_count(shapes_processor):
    collator = BridgeDataCollator(shapes_processor, mim_probability=0.4, num_patches=49)
    torch.manual_seed(0)
    masks = torch.stack([collator(_rows(["a red circle"] * 6))["mim_mask"] for _ in range(30)])
    assert masks.dtype == torch.bool and masks.shape == (30, 6, 49)
    assert (masks.sum(-1) == round(0.4 * 49)).all()
    assert masks.float().mean(dim=(0, 1)).min() > 0.1  # every position gets masked sometimes: random positions
    assert not torch.equal(masks[0, 0], masks[0, 1])
    with pytest.raises(ValueError, match="needs num_patches"):
        BridgeDataCollator(shapes_processor, mim_probability=0.4)


def test_collator_bad_rows(shapes_processor):
    collator = BridgeDataCollator(shapes_processor)
    with pytest.raises(ValueError, match=r"Row 1 of the batch has an empty or non-string caption ' '"):
        collator(_rows(["a red circle", " "]))
    with pytest.raises(ValueError, match=r"Row 0 of the batch has no 'caption' column; its columns are \['image'\]"):
        collator([{"image": PILImage.new("RGB", (4, 4))}])


def test_collator_long_captions_error_or_truncate(shapes_processor):
    long = " ".join(["a red circle"] * 5)  # 15 words + 2 special tokens > model_max_length 12
    with pytest.raises(ValueError, match=r"Row 1 .* 17 tokens, more than the tokenizer's model_max_length 12"):
        BridgeDataCollator(shapes_processor)(_rows(["a red circle", long]))
    batch = BridgeDataCollator(shapes_processor, max_length=8, mlm_probability=0.2)(_rows(["a red circle", long]))
    assert batch["input_ids"].shape == (2, 8)
    assert batch["input_ids"][1, -1] == shapes_processor.tokenizer.sep_token_id


def _bridge_config(vision, **fields):
    text = BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=24,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=32,
    )
    return BridgeConfig.from_vision_text_configs(
        vision, text, num_interaction_layers=1, shared_dim=16, num_interaction_heads=2, projection_dim=8, **fields
    )


@pytest.mark.parametrize("image_size, patch_size, expected", [(32, 8, 16), ((32, 48), 8, 24), ((32, 48), (8, 16), 12)])
def test_num_patch_tokens_handles_rectangular_images_and_patches(image_size, patch_size, expected):
    vision = ViTConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=image_size,
        patch_size=patch_size,
    )
    config = _bridge_config(vision)
    assert num_patch_tokens(config) == num_patch_tokens(vision) == expected
    assert config.num_vision_positions == expected + 1  # CLS excluded from the patches
    siglip = SiglipVisionConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, image_size=32, patch_size=8
    )
    assert num_patch_tokens(siglip) == 16
    with pytest.raises(
        ValueError,
        match=r"cannot count the patches of a 'bert' vision tower: its config has no "
        r"image_size/patch_size; pass num_patches=",
    ):
        num_patch_tokens(BertConfig())


def test_collator_for_model_follows_the_config(shapes_processor):
    vision = ViTConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=(16, 24),
        patch_size=8,
    )
    stage_a = BridgeDataCollator.for_model(shapes_processor, _bridge_config(vision, max_text_positions=10))
    assert (stage_a.mlm_probability, stage_a.mim_probability, stage_a.max_length) == (0.0, 0.0, 10)
    config = _bridge_config(vision, max_text_positions=10, mlm_loss_weight=0.5, mim_loss_weight=0.5)
    collator = BridgeDataCollator.for_model(
        shapes_processor, config, mlm_probability=0.2, mim_probability=0.5, text_column="text"
    )
    assert (collator.mlm_probability, collator.mim_probability, collator.num_patches) == (0.2, 0.5, 6)
    batch = collator([{"image": PILImage.new("RGB", (24, 16)), "text": "a red circle left of a blue square " * 3}])
    assert batch["mim_mask"].shape == (1, 6) and int(batch["mim_mask"].sum()) == 3
    assert batch["input_ids"].shape == (1, 10)  # truncated to max_text_positions


def test_the_collator_calls_the_tokenizer_without_warnings(shapes_processor):
    # Tokenizers loaded from a tokenizer.json with truncation settings carry a `max_length` default (MiniLM: 128);
    # a tokenizer call with padding=True and that max_length but no truncation warns that it is ignored.
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)}, model_max_length=12, max_length=128)
    processor = BridgeProcessor(image_processor=shapes_processor.image_processor, tokenizer=tokenizer)
    rows = _rows(["a red circle", "a blue square left of an orange circle"])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for collator in (
            BridgeDataCollator(processor),
            BridgeDataCollator(processor, max_length=8),
            BridgeDataCollator(processor, mlm_probability=0.2, mim_probability=0.2, num_patches=4),
        ):
            collator(rows)


def test_twin_adjacent_order_keeps_twins_together_and_covers_the_data():
    from datasets import Dataset

    from modeling_bridge.data import twin_adjacent_order

    # rows 0/3 and 1/4 are twins, 2 has none
    data = Dataset.from_dict({"caption": ["a", "b", "c", "d", "e"], "twin": [3, 4, -1, 0, 1]})
    ordered = twin_adjacent_order(data, num_rows=10, seed=1)
    captions = ordered["caption"]
    assert sorted(captions[:5]) == ["a", "b", "c", "d", "e"] and sorted(captions[5:]) == sorted(captions[:5])
    for k, caption in enumerate(captions):
        partner = {"a": "d", "d": "a", "b": "e", "e": "b"}.get(caption)
        if partner is not None:
            neighbours = captions[max(k - 1, 0) : k] + captions[k + 1 : k + 2]
            assert partner in neighbours, (k, captions)
    assert twin_adjacent_order(data, 10, seed=1)["caption"] == captions  # seeded
    assert twin_adjacent_order(data, 10, seed=2)["caption"] != captions
    with pytest.raises(ValueError, match="needs a 'twin' column"):
        twin_adjacent_order(data.remove_columns("twin"), 4)


def test_twin_adjacent_order_groups_same_word_scenes_into_runs():
    from datasets import Dataset

    from modeling_bridge.data import twin_adjacent_order

    # 12 rows in twin pairs (2k, 2k+1); groups by "family": rows 0-5 family 0, rows 6-11 family 1
    data = Dataset.from_dict({"row": list(range(12)), "twin": [k ^ 1 for k in range(12)], "family": [0] * 6 + [1] * 6})
    ordered = twin_adjacent_order(data, num_rows=24, seed=3, group_columns=("family",))
    families = ordered["family"]
    for start in (0, 12):  # each pass is two runs of one family each
        one_pass = families[start : start + 12]
        assert one_pass[:6] == [one_pass[0]] * 6 and one_pass[6:] == [one_pass[6]] * 6 and one_pass[0] != one_pass[6]
    rows = ordered["row"]
    assert all(rows[k] ^ 1 == rows[k + 1] for k in range(0, 24, 2))  # twins stay adjacent, pairs aligned
    # the same order from a torch-formatted dataset (its columns are tensors)
    formatted = twin_adjacent_order(data.with_format("torch"), num_rows=24, seed=3, group_columns=("family",))
    assert formatted.with_format(None)["row"] == ordered["row"]
    # group_rows=2 cuts each family into runs of one pair, shuffled: the families interleave (for this seed)
    short = twin_adjacent_order(data, num_rows=12, seed=3, group_columns=("family",), group_rows=2)
    changes = sum(a != b for a, b in zip(short["family"], short["family"][1:]))
    assert changes > 1 and all(short["row"][k] ^ 1 == short["row"][k + 1] for k in range(0, 12, 2))
    assert sorted(set(rows[:12])) == list(range(12))
    with pytest.raises(ValueError, match="needs a 'family' column"):
        twin_adjacent_order(data.remove_columns("family"), 4, group_columns=("family",))
    with pytest.raises(ValueError, match="group_rows must be a positive number"):
        twin_adjacent_order(data, 4, group_columns=("family",), group_rows=0)
