"""BridgeForImageTextRetrieval (ITM of aligned pairs, search) and BridgeForVisualReasoning (NLVR2): forward and
backward on tiny towers, their Auto classes, save/load, and loading as Hub remote code."""

import json

import pytest
import torch
import torch.nn.functional as F

from conftest import make_config, make_model, random_inputs, run_as_hub_code
from modeling_bridge import (
    AutoModelForImageTextRetrieval,
    AutoModelForVisualReasoning,
    BridgeForImageTextRetrieval,
    BridgeForVisualReasoning,
)


def _reasoning_inputs(batch=3):
    pixel_values, input_ids, attention_mask = random_inputs(2 * batch, batch)
    return pixel_values.view(batch, 2, *pixel_values.shape[1:]), input_ids, attention_mask


def test_retrieval_head_scores_aligned_pairs_like_the_base_model():
    base = make_model()
    model = BridgeForImageTextRetrieval(base.config)
    model.bridge.load_state_dict(base.state_dict())
    model.eval()
    pixel_values, input_ids, attention_mask = random_inputs(3, 3)
    inputs = {"pixel_values": pixel_values, "input_ids": input_ids, "attention_mask": attention_mask}
    with torch.no_grad():
        out = model(**inputs)
        every_pair = base(**inputs, score="itm")
        fused = base(**inputs, score="fused").logits_per_image
    assert out.logits.shape == (3, 2)
    torch.testing.assert_close(out.logits, every_pair.itm_logits.diagonal().t(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.fused_logits, fused.diagonal(), rtol=1e-5, atol=1e-6)

    model.train()
    labels = torch.tensor([1, 0, 1])
    out = model(**inputs, labels=labels)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels))
    out.loss.backward()
    assert model.bridge.itm_head.classifier.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"labels must be a \(batch,\) = \(3,\) integer tensor of 0 / 1"):
        model(**inputs, labels=torch.ones(3))
    with pytest.raises(ValueError, match="Got 3 images and 2 texts"):
        model(pixel_values=pixel_values, input_ids=input_ids[:2])


def test_retrieval_head_searches_a_gallery(processor):
    from conftest import random_images
    from modeling_bridge.retrieval import build_gallery, search

    model = BridgeForImageTextRetrieval(make_model().config).eval()
    images, texts = random_images(5), ["a red circle", "a blue square", "a green triangle"]
    gallery = model.build_gallery(processor, images=images, progress=False)
    found = model.search(processor, gallery, texts, k=3)
    expected = search(model, processor, build_gallery(model, processor, images=images, progress=False), texts, k=3,
                      rerank="itm")  # fmt: skip
    assert torch.equal(found.indices, expected.indices)
    torch.testing.assert_close(found.scores, expected.scores)


def test_visual_reasoning_reads_each_image_with_the_statement_in_order():
    torch.manual_seed(0)
    model = BridgeForVisualReasoning(make_config()).eval()
    pixel_values, input_ids, attention_mask = _reasoning_inputs()
    with torch.no_grad():
        out = model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask)
        swapped = model(pixel_values=pixel_values.flip(1), input_ids=input_ids, attention_mask=attention_mask)
        # image 1 of statement 2, on its own, is the pair model.bridge.interact sees
        alone = model.bridge(
            pixel_values=pixel_values[2, 1:], input_ids=input_ids[2:], attention_mask=attention_mask[2:],
            score="fused", output_hidden_states=True,
        )  # fmt: skip
    assert out.logits.shape == (3, 2) and out.cross_image_embeds.shape == (3, 2, model.config.projection_dim)
    torch.testing.assert_close(out.cross_image_embeds[2, 1], alone.cross_image_embeds[0, 0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(swapped.cross_image_embeds, out.cross_image_embeds.flip(1))
    assert not torch.allclose(swapped.logits, out.logits)  # left and right are not interchangeable

    model.train()
    labels = torch.tensor([1, 0, 0])
    out = model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels))
    out.loss.backward()
    for name in ("classifier.0.weight", "bridge.interaction_layers.0.vision_attention.q_proj.weight"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name
    with pytest.raises(ValueError, match=r"pixel_values must be \(batch, 2, channels, height, width\)"):
        model(pixel_values=pixel_values[:, 0], input_ids=input_ids)
    with pytest.raises(ValueError, match="Got 3 images and 2 statements"):
        model(pixel_values=pixel_values, input_ids=input_ids[:2])


HEADS_SCRIPT = """
import json, sys
import torch
from transformers.dynamic_module_utils import get_class_from_dynamic_module
out = {}
for folder, name in ((sys.argv[1], "BridgeForImageTextRetrieval"), (sys.argv[2], "BridgeForVisualReasoning")):
    cls = get_class_from_dynamic_module(f"modeling_bridge.{name}", folder)
    model = cls.from_pretrained(folder).eval()
    with torch.no_grad():
        out[name] = model(**torch.load(f"{folder}/inputs.pt", weights_only=True)).logits.tolist()
json.dump(out, open(sys.argv[3], "w"))
"""


def test_heads_round_trip_through_their_auto_classes_and_as_hub_code(tmp_path):
    import json

    base = make_model()
    base.save_pretrained(tmp_path / "base")
    # a BridgeModel folder is a retrieval model: no weight is new
    retrieval = AutoModelForImageTextRetrieval.from_pretrained(tmp_path / "base").eval()
    assert type(retrieval) is BridgeForImageTextRetrieval
    assert torch.equal(retrieval.bridge.itm_head.classifier.weight, base.itm_head.classifier.weight)
    torch.manual_seed(1)
    reasoning = BridgeForVisualReasoning(make_config()).eval()

    cases = []
    for model, name, inputs in (
        (retrieval, "retrieval", dict(zip(("pixel_values", "input_ids", "attention_mask"), random_inputs(3, 3)))),
        (reasoning, "reasoning", dict(zip(("pixel_values", "input_ids", "attention_mask"), _reasoning_inputs()))),
    ):
        model.save_pretrained(tmp_path / name)
        torch.save(inputs, tmp_path / name / "inputs.pt")
        cases.append((model, inputs))
    auto_map = json.loads((tmp_path / "reasoning" / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForVisualReasoning"] == "modeling_bridge.BridgeForVisualReasoning"
    for (model, inputs), auto, name in zip(
        cases, (AutoModelForImageTextRetrieval, AutoModelForVisualReasoning), ("retrieval", "reasoning")
    ):
        reloaded = auto.from_pretrained(tmp_path / name).eval()
        assert type(reloaded) is type(model)
        with torch.no_grad():
            assert torch.equal(reloaded(**inputs).logits, model(**inputs).logits)

    out = run_as_hub_code(tmp_path, HEADS_SCRIPT, tmp_path / "retrieval", tmp_path / "reasoning")
    for (model, inputs), name in zip(cases, ("BridgeForImageTextRetrieval", "BridgeForVisualReasoning")):
        with torch.no_grad():
            assert torch.equal(torch.tensor(out[name]), model(**inputs).logits), name


def test_registrations_and_the_saved_auto_map_derive_from_the_one_table(tmp_path):
    import transformers

    from modeling_bridge import BridgeConfig, auto
    from modeling_bridge.modeling_bridge import BRIDGE_AUTO_MAP, BRIDGE_MODEL_CLASSES

    rows = 0
    for model_class, auto_names in BRIDGE_MODEL_CLASSES.items():
        assert model_class._auto_class == model_class._default_auto_class == auto_names[0]
        for name in auto_names:
            auto_class = getattr(transformers, name, None) or getattr(auto, name)
            assert auto_class._model_mapping[BridgeConfig] is model_class
            assert BRIDGE_AUTO_MAP[name] == f"modeling_bridge.{model_class.__name__}"
            rows += 1
    assert len(BRIDGE_AUTO_MAP) == rows + 1  # and AutoConfig
    model_class = next(iter(BRIDGE_MODEL_CLASSES))
    model_class(make_config()).save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["auto_map"] == BRIDGE_AUTO_MAP
