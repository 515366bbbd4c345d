"""Saving, reloading (installed and as Hub remote code), the processor and the zero-shot pipeline."""

import json
import os
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModel,
    AutoModelForZeroShotImageClassification,
    AutoProcessor,
    ZeroShotImageClassificationPipeline,
    pipeline,
)

from conftest import IMAGE_SIZE, random_images, random_inputs, run_as_hub_code
from modeling_bridge import BridgeModel, BridgeProcessor, BridgeZeroShotImageClassificationPipeline


LABELS = ["a red circle", "a blue square", "a green triangle"]


@pytest.fixture
def saved(tmp_path, model, processor):
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    return tmp_path


def test_save_writes_weights_code_files_and_auto_map(saved):
    files = set(os.listdir(saved))
    assert {
        "config.json",
        "model.safetensors",
        "configuration_bridge.py",
        "modeling_bridge.py",
        "loss_bridge.py",
        "processing_bridge.py",
        "pipelines.py",
        "processor_config.json",
    } <= files
    auto_map = json.loads((saved / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": "configuration_bridge.BridgeConfig",
        "AutoModel": "modeling_bridge.BridgeModel",
        "AutoModelForZeroShotImageClassification": "modeling_bridge.BridgeModel",
        "AutoModelForPreTraining": "modeling_bridge.BridgeForPreTraining",
        "AutoModelForVisualQuestionAnswering": "modeling_bridge.BridgeForQuestionAnswering",
        "AutoModelForImageTextRetrieval": "modeling_bridge.BridgeForImageTextRetrieval",
        "AutoModelForVisualReasoning": "modeling_bridge.BridgeForVisualReasoning",
    }
    assert json.loads((saved / "processor_config.json").read_text())["auto_map"] == {
        "AutoProcessor": "processing_bridge.BridgeProcessor"
    }
    # Hub code needs nothing but torch, transformers and its siblings: the packages transformers checks for before
    # running remote code (imports inside try blocks, e.g. the optional search helpers, are optional by design)
    from transformers.dynamic_module_utils import get_imports

    assert "loading_bridge.py" in files  # the load checks, a Hub module of their own
    for name in (
        "configuration_bridge.py",
        "modeling_bridge.py",
        "loss_bridge.py",
        "loading_bridge.py",
        "processing_bridge.py",
        "pipelines.py",
    ):
        packages = set(get_imports(saved / name)) - set(sys.stdlib_module_names)
        assert packages <= {"torch", "transformers", "safetensors", "huggingface_hub"}, name


@pytest.mark.parametrize("auto_class", [AutoModel, AutoModelForZeroShotImageClassification])
def test_round_trip_gives_bit_identical_logits(saved, model, auto_class):
    pixel_values, input_ids, attention_mask = random_inputs(3, 4)
    reloaded = auto_class.from_pretrained(saved).eval()
    assert type(reloaded) is BridgeModel
    with torch.no_grad():
        for score in ("unimodal", "fused", "itm"):
            a = model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask, score=score)
            b = reloaded(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask, score=score)
            assert torch.equal(a.logits_per_image, b.logits_per_image), score


def test_reload_with_another_attention_implementation(saved, model):
    pixel_values, input_ids, attention_mask = random_inputs(2, 3)
    eager = BridgeModel.from_pretrained(saved, attn_implementation="eager").eval()
    assert eager.config._attn_implementation == "eager"
    with torch.no_grad():
        a = model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask).logits_per_image
        b = eager(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask).logits_per_image
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_processor_round_trip_and_image_modes(saved, processor):
    loaded = AutoProcessor.from_pretrained(saved)
    assert isinstance(loaded, BridgeProcessor)
    for mode in ("RGB", "L", "RGBA"):
        batch = loaded(
            images=random_images(2, mode), text=["a red circle", "a blue square left of a circle"], return_tensors="pt"
        )
        assert batch["pixel_values"].shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
        assert batch["input_ids"].shape[0] == 2 and batch["attention_mask"][0].sum() < batch["input_ids"].shape[1]
    original = processor(images=random_images(1), text=LABELS, return_tensors="pt")
    again = loaded(images=random_images(1), text=LABELS, return_tensors="pt")
    for key in original:
        assert torch.equal(original[key], again[key]), key
    with pytest.raises(ValueError, match="needs images, text, or both"):
        loaded()
    with pytest.raises(ValueError, match="empty list of texts"):
        loaded(text=[])


def test_zero_shot_pipeline_returns_sorted_probabilities(saved):
    classifier = pipeline("zero-shot-image-classification", model=str(saved))
    for image in random_images(2, "RGB") + random_images(1, "L") + random_images(1, "RGBA"):
        result = classifier(image, candidate_labels=LABELS)
        assert sorted(r["label"] for r in result) == sorted(LABELS)
        scores = [r["score"] for r in result]
        assert scores == sorted(scores, reverse=True)
        assert sum(scores) == pytest.approx(1.0, abs=1e-5)


def test_importing_the_package_registers_no_pipeline_class():
    # transformers' own class serves every model, BRIDGE included: nothing global is replaced.
    from transformers.pipelines import PIPELINE_REGISTRY

    impl = PIPELINE_REGISTRY.supported_tasks["zero-shot-image-classification"]["impl"]
    assert impl in (
        ZeroShotImageClassificationPipeline,
        "transformers.pipelines.zero_shot_image_classification.ZeroShotImageClassificationPipeline",
    )


def test_stock_pipeline_truncates_long_labels_like_the_tokenizer(saved, processor):
    long_label = "red circle left of a blue square " * 4
    classifier = pipeline("zero-shot-image-classification", model=str(saved))
    assert type(classifier) is ZeroShotImageClassificationPipeline
    image = random_images(1, seed=5)[0]
    result = {r["label"]: r["score"] for r in classifier(image, candidate_labels=[long_label, "a green triangle"])}
    model = BridgeModel.from_pretrained(saved).eval()
    texts = [f"This is a photo of {label}." for label in (long_label, "a green triangle")]
    inputs = processor(
        images=image, text=texts, truncation=True, max_length=model.config.max_text_positions, return_tensors="pt"
    )
    with torch.no_grad():
        probs = model(**inputs).logits_per_image.softmax(-1)[0]
    assert result == pytest.approx({long_label: probs[0].item(), "a green triangle": probs[1].item()}, abs=1e-6)


def test_bridge_pipeline_class_takes_a_string_label_and_refuses_none(saved):
    classifier = pipeline(
        "zero-shot-image-classification", model=str(saved), pipeline_class=BridgeZeroShotImageClassificationPipeline
    )
    image = random_images(1)[0]
    assert classifier(image, candidate_labels="a red circle") == [{"score": 1.0, "label": "a red circle"}]
    many = classifier(image, candidate_labels=["a red circle", "blue " * 40])
    assert sorted(r["label"] for r in many) == sorted(["a red circle", "blue " * 40])
    with pytest.raises(ValueError, match="no candidate_labels"):
        classifier(image, candidate_labels=[])


def test_pipeline_scores_equal_the_models_softmax(saved, model, processor):
    image = random_images(1, seed=3)[0]
    result = pipeline("zero-shot-image-classification", model=str(saved))(image, candidate_labels=LABELS)
    inputs = processor(images=image, text=[f"This is a photo of {label}." for label in LABELS], return_tensors="pt")
    with torch.no_grad():
        probs = model(**inputs).logits_per_image.softmax(-1)[0]
    assert {r["label"]: r["score"] for r in result} == pytest.approx(dict(zip(LABELS, probs.tolist())), abs=1e-6)


REMOTE_SCRIPT = textwrap.dedent(  # run by run_as_hub_code: modeling_bridge is not importable there
    """
    import json, sys
    import torch
    from PIL import Image
    from transformers import AutoModel, AutoProcessor, AutoImageProcessor, AutoTokenizer, pipeline
    saved, inputs_path, out_path = sys.argv[1:4]
    try:
        import modeling_bridge
        raise SystemExit("the package should not be importable here")
    except ImportError:
        pass
    model = AutoModel.from_pretrained(saved, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(saved, trust_remote_code=True)
    AutoImageProcessor.from_pretrained(saved)
    AutoTokenizer.from_pretrained(saved)
    inputs = torch.load(inputs_path, weights_only=True)
    with torch.no_grad():
        logits = {s: model(**inputs, score=s).logits_per_image.tolist() for s in ("unimodal", "fused", "itm")}
    image = Image.new("RGB", (40, 40), (200, 30, 30))
    batch = processor(images=[image, image.convert("L")], text=["a red circle", "a blue square"], return_tensors="pt")
    classifier = pipeline("zero-shot-image-classification", model=saved, trust_remote_code=True)
    result = classifier(image.convert("RGBA"), candidate_labels=["a red circle", "a blue square", "a green triangle"])
    json.dump({"class": type(model).__module__ + "." + type(model).__name__, "logits": logits,
               "processor": type(processor).__name__, "pixel_shape": list(batch["pixel_values"].shape),
               "pipeline": result}, open(out_path, "w"))
    """
)


def test_remote_code_loads_without_the_package(saved, model, tmp_path):
    pixel_values, input_ids, attention_mask = random_inputs(3, 4)
    inputs = {"pixel_values": pixel_values, "input_ids": input_ids, "attention_mask": attention_mask}
    torch.save(inputs, tmp_path / "inputs.pt")
    out = run_as_hub_code(tmp_path, REMOTE_SCRIPT, saved, tmp_path / "inputs.pt")
    assert out["class"].startswith("transformers_modules.") and out["class"].endswith("modeling_bridge.BridgeModel")
    assert out["processor"] == "BridgeProcessor" and out["pixel_shape"] == [2, 3, IMAGE_SIZE, IMAGE_SIZE]
    with torch.no_grad():
        for score, remote in out["logits"].items():
            local = model(**inputs, score=score).logits_per_image
            assert torch.equal(torch.tensor(remote), local), score
    assert sum(r["score"] for r in out["pipeline"]) == pytest.approx(1.0, abs=1e-5)


def _edit_weights(saved, edit):
    weights = load_file(saved / "model.safetensors")
    edit(weights)
    save_file(weights, saved / "model.safetensors", metadata={"format": "pt"})


def test_missing_interaction_keys_are_reported_by_name(saved):
    _edit_weights(saved, lambda w: w.pop("interaction_layers.1.text_attention.q_proj.weight"))
    with pytest.raises(ValueError, match=r"Missing keys: \['interaction_layers\.1\.text_attention\.q_proj\.weight'\]"):
        BridgeModel.from_pretrained(saved)


def test_unexpected_interaction_keys_are_reported_by_name(saved):
    def add_layer(weights):
        for key in [k for k in weights if k.startswith("interaction_layers.1.")]:
            weights[key.replace("interaction_layers.1.", "interaction_layers.2.")] = weights[key].clone()

    _edit_weights(saved, add_layer)
    with pytest.raises(ValueError, match=r"Unexpected keys: \[.*'interaction_layers\.2\.text_gate\.value'"):
        AutoModel.from_pretrained(saved)
