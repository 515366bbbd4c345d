"""BridgeForQuestionAnswering: VQA as classification over an answer vocabulary, on each pair's fused embeddings."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForVisualQuestionAnswering

from conftest import BLOCK_PACKAGE_PRELUDE, make_config, random_inputs
from modeling_bridge import BridgeForPreTraining, BridgeForQuestionAnswering


ANSWERS = ["red", "blue", "circle", "square", "yes", "no"]


def _model(seed=0):
    torch.manual_seed(seed)
    config = make_config(id2label=dict(enumerate(ANSWERS)), label2id={a: i for i, a in enumerate(ANSWERS)})
    return BridgeForQuestionAnswering(config)


def test_vqa_forward_backward_and_soft_target_loss():
    model = _model().train()
    pixel_values, input_ids, attention_mask = random_inputs(3, 3)
    labels = torch.zeros(3, len(ANSWERS))
    labels[0, 0], labels[1, 4], labels[2, 2], labels[2, 3] = 1.0, 1.0, 0.6, 0.3  # soft VQA scores
    out = model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask, labels=labels)
    assert out.logits.shape == (3, len(ANSWERS))
    expected = F.binary_cross_entropy_with_logits(out.logits, labels, reduction="sum") / 3  # sum over answers
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    for name in ("classifier.0.weight", "bridge.interaction_layers.0.text_attention.q_proj.weight"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name
    # each pair on its own: the logits of question 0 do not depend on the other rows
    with torch.no_grad():
        model.eval()
        alone = model(input_ids=input_ids[:1], pixel_values=pixel_values[:1], attention_mask=attention_mask[:1])
        together = model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
    torch.testing.assert_close(alone.logits[0], together.logits[0], rtol=1e-5, atol=1e-6)


def test_vqa_bad_inputs():
    model = _model()
    pixel_values, input_ids, attention_mask = random_inputs(2, 3)
    with pytest.raises(ValueError, match="Got 2 images and 3 questions"):
        model(input_ids=input_ids, pixel_values=pixel_values)
    with pytest.raises(ValueError, match=r"labels have shape \(2,\); VQA labels are soft answer scores"):
        model(input_ids=input_ids[:2], pixel_values=pixel_values, labels=torch.ones(2))
    with pytest.raises(ValueError, match="needs pixel_values and input_ids"):
        model(input_ids=input_ids)


def test_vqa_round_trip_and_auto_class(tmp_path):
    model = _model().eval()
    pixel_values, input_ids, attention_mask = random_inputs(2, 2)
    inputs = {"pixel_values": pixel_values, "input_ids": input_ids, "attention_mask": attention_mask}
    model.save_pretrained(tmp_path / "vqa")
    saved = json.loads((tmp_path / "vqa" / "config.json").read_text())
    assert saved["auto_map"]["AutoModelForVisualQuestionAnswering"] == "modeling_bridge.BridgeForQuestionAnswering"
    reloaded = AutoModelForVisualQuestionAnswering.from_pretrained(tmp_path / "vqa").eval()
    assert type(reloaded) is BridgeForQuestionAnswering and reloaded.config.id2label[4] == "yes"
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, model(**inputs).logits)
    # a pre-training checkpoint starts a VQA model: its BRIDGE weights carry over, the classifier is new
    pretrained = BridgeForPreTraining(make_config())
    pretrained.save_pretrained(tmp_path / "pre")
    vqa = BridgeForQuestionAnswering.from_pretrained(tmp_path / "pre", num_labels=3)
    assert torch.equal(
        vqa.bridge.interaction_layers[0].text_to_shared.weight,
        pretrained.bridge.interaction_layers[0].text_to_shared.weight,
    )
    assert vqa.classifier[-1].out_features == 3

    script = tmp_path / "remote.py"
    script.write_text(
        BLOCK_PACKAGE_PRELUDE
        + textwrap.dedent(
            """
            import json, sys
            import torch
            from transformers import AutoModelForVisualQuestionAnswering
            model = AutoModelForVisualQuestionAnswering.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
            with torch.no_grad():
                logits = model(**torch.load(sys.argv[2], weights_only=True)).logits
            json.dump({"class": type(model).__name__, "logits": logits.tolist()}, open(sys.argv[3], "w"))
            """
        )
    )
    torch.save(inputs, tmp_path / "inputs.pt")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "vqa"), str(tmp_path / "inputs.pt"), str(tmp_path / "out.json")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["class"] == "BridgeForQuestionAnswering"
    with torch.no_grad():
        assert torch.equal(torch.tensor(out["logits"]), model(**inputs).logits)
