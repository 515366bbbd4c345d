"""Checkpoints saved by modeling-bridge 0.1 (before the pre-training heads moved from BridgeModel to
BridgeForPreTraining; tests/fixtures/README.md) load with identical outputs, through every class that reads them."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForPreTraining, AutoModelForVisualQuestionAnswering

from conftest import random_inputs
from modeling_bridge import (
    AutoModelForImageTextRetrieval,
    AutoModelForVisualReasoning,
    BridgeForPreTraining,
    BridgeModel,
)


FIXTURES = Path(__file__).resolve().parent / "fixtures"
EXPECTED = json.loads((FIXTURES / "bridge-0.1-expected.json").read_text())


@pytest.mark.parametrize("load", [BridgeModel.from_pretrained, AutoModel.from_pretrained])
@torch.no_grad()
def test_old_bridge_model_gives_identical_scores(load):
    assert "mlm_head.dense.weight" in load_file(FIXTURES / "bridge-0.1-model" / "model.safetensors")  # the old layout
    model = load(FIXTURES / "bridge-0.1-model").eval()
    assert not hasattr(model, "mlm_head")
    pixel_values, input_ids, attention_mask = random_inputs(3, 4)
    for score in ("unimodal", "fused", "itm"):
        got = model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask, score=score)
        torch.testing.assert_close(got.logits_per_image, torch.tensor(EXPECTED[score]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("load", [BridgeForPreTraining.from_pretrained, AutoModelForPreTraining.from_pretrained])
@torch.no_grad()
def test_old_pretraining_checkpoint_keeps_its_heads(load):
    weights = load_file(FIXTURES / "bridge-0.1-pretraining" / "model.safetensors")
    assert "bridge.mlm_head.dense.weight" in weights and "bridge.itc_alpha.value" in weights  # the old layout
    model = load(FIXTURES / "bridge-0.1-pretraining").eval()
    assert model.itc_alpha.value.item() == pytest.approx(EXPECTED["pretraining_itc_alpha"], abs=1e-7)
    torch.testing.assert_close(model.mlm_head.dense.weight, weights["bridge.mlm_head.dense.weight"])
    torch.testing.assert_close(model.mim_head.decoder.bias, weights["bridge.mim_head.decoder.bias"])
    pixel_values, input_ids, attention_mask = random_inputs(3, 4)
    fused = model.bridge(
        pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask
    ).logits_per_image
    torch.testing.assert_close(fused, torch.tensor(EXPECTED["pretraining_fused"]), rtol=1e-5, atol=1e-5)
    text = model.bridge.get_text_features(input_ids, attention_mask).last_hidden_state
    assert model.mlm_head(text).sum().item() == pytest.approx(EXPECTED["pretraining_mlm_logits_sum"], rel=1e-5)


def test_new_layout_round_trips_and_bridge_model_reads_a_pretraining_folder(tmp_path):
    model = BridgeForPreTraining.from_pretrained(FIXTURES / "bridge-0.1-pretraining")
    model.save_pretrained(tmp_path)
    keys = load_file(tmp_path / "model.safetensors").keys()
    assert "mlm_head.dense.weight" in keys and not any(k.startswith("bridge.mlm_head") for k in keys)
    again = BridgeForPreTraining.from_pretrained(tmp_path)
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    scorer = BridgeModel.from_pretrained(tmp_path)  # the heads are not part of BridgeModel
    assert set(scorer.state_dict()) == {k[len("bridge.") :] for k in model.state_dict() if k.startswith("bridge.")}


# Folders saved at commit 1c168be, before the refactor that gave the objective, the task heads and the towers one
# home each (tests/fixtures/README.md): every class reads them with the outputs that commit gave.
SAVED_1C168BE = FIXTURES / "bridge-1c168be"
EXPECTED_1C168BE = json.loads((SAVED_1C168BE / "expected.json").read_text())


@pytest.mark.parametrize("name", ["model-vit-bert", "model-siglip-roberta", "model-resnet-bert"])
@torch.no_grad()
def test_1c168be_bridge_models_give_identical_scores(name):
    model = AutoModel.from_pretrained(SAVED_1C168BE / name).eval()
    pixel_values, input_ids, attention_mask = random_inputs(3, 4)
    for score in ("unimodal", "fused", "itm"):
        got = model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask, score=score)
        expected = torch.tensor(EXPECTED_1C168BE[name][score])
        torch.testing.assert_close(got.logits_per_image, expected, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_1c168be_pretraining_folder_gives_identical_losses():
    model = AutoModelForPreTraining.from_pretrained(SAVED_1C168BE / "pretraining").eval()
    expected = EXPECTED_1C168BE["pretraining"]
    pixel_values, input_ids, attention_mask = random_inputs(4, 4, seed=expected["inputs"]["seed"])
    out = model(
        input_ids=input_ids,
        pixel_values=pixel_values,
        attention_mask=attention_mask,
        mlm_input_ids=torch.tensor(expected["inputs"]["mlm_input_ids"]),
        mlm_labels=torch.tensor(expected["inputs"]["mlm_labels"]),
        mim_mask=torch.tensor(expected["inputs"]["mim_mask"]),
    )
    for name in ("loss", "itc_loss", "itm_loss", "mlm_loss", "mim_loss", "cycle_loss", "unimodal_itc_loss"):
        assert getattr(out, name).item() == pytest.approx(expected[name], rel=1e-5, abs=1e-6), name
    assert out.cross_itc_loss.item() == pytest.approx(expected["cross_itc_loss"], rel=1e-5, abs=1e-6)


@torch.no_grad()
def test_1c168be_task_heads_give_identical_outputs():
    pixel_values, input_ids, attention_mask = random_inputs(3, 4)
    expected = EXPECTED_1C168BE["vqa"]
    vqa = AutoModelForVisualQuestionAnswering.from_pretrained(SAVED_1C168BE / "vqa").eval()
    out = vqa(
        input_ids=input_ids[:3],
        pixel_values=pixel_values,
        attention_mask=attention_mask[:3],
        labels=torch.tensor(expected["labels"]),
    )
    torch.testing.assert_close(out.logits, torch.tensor(expected["logits"]), rtol=1e-5, atol=1e-5)
    assert out.loss.item() == pytest.approx(expected["loss"], rel=1e-5)

    expected = EXPECTED_1C168BE["reasoning"]
    reasoning = AutoModelForVisualReasoning.from_pretrained(SAVED_1C168BE / "reasoning").eval()
    pairs = torch.randn(2, 2, 3, 32, 32, generator=torch.Generator().manual_seed(expected["pixel_seed"]))
    out = reasoning(
        input_ids=input_ids[:2], pixel_values=pairs, attention_mask=attention_mask[:2], labels=torch.tensor([1, 0])
    )
    torch.testing.assert_close(out.logits, torch.tensor(expected["logits"]), rtol=1e-5, atol=1e-5)
    assert out.loss.item() == pytest.approx(expected["loss"], rel=1e-5)

    expected = EXPECTED_1C168BE["retrieval"]
    retrieval = AutoModelForImageTextRetrieval.from_pretrained(SAVED_1C168BE / "model-vit-bert").eval()
    out = retrieval(
        input_ids=input_ids[:3],
        pixel_values=pixel_values,
        attention_mask=attention_mask[:3],
        labels=torch.tensor([1, 0, -100]),
    )
    torch.testing.assert_close(out.logits, torch.tensor(expected["logits"]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.fused_logits, torch.tensor(expected["fused_logits"]), rtol=1e-5, atol=1e-5)
    assert out.loss.item() == pytest.approx(expected["loss"], rel=1e-5)
