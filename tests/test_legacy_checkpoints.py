"""Checkpoints saved by modeling-bridge 0.1 (before the pre-training heads moved from BridgeModel to
BridgeForPreTraining; tests/fixtures/README.md) load with identical outputs, through every class that reads them."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForPreTraining

from conftest import random_inputs
from modeling_bridge import BridgeForPreTraining, BridgeModel


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
