"""BridgeForPreTraining: every loss component against an independent path (the loss functions themselves:
test_loss.py)."""

import pytest
import torch
import torch.nn.functional as F

from conftest import make_config, random_inputs
from modeling_bridge import BridgeForPreTraining, BridgeModel
from modeling_bridge.loss_bridge import (
    contrastive_loss,
    cycle_consistency_loss,
    match_loss,
)


# ---------------------------------------------------------------------------------------------- the model


def _pretraining_model(seed=0, **overrides):
    torch.manual_seed(seed)
    model = BridgeForPreTraining(make_config(itm_dropout=0.0, **overrides))
    with torch.no_grad():  # perturb the zero-initialised biases/tables so that every parameter matters
        for name, param in model.named_parameters():
            if not name.startswith(("bridge.vision_model.", "bridge.text_model.")):
                param.add_(torch.randn_like(param) * 0.1)
    return model.eval()


def _scoring_model(pretraining: BridgeForPreTraining) -> BridgeModel:
    """The same weights as a BridgeModel: an independent path to the scores."""
    model = BridgeModel(pretraining.config)
    model.load_state_dict(pretraining.bridge.state_dict())
    return model.eval()


def test_pairwise_objective_with_every_negative_equals_the_full_score_matrix_losses():
    """With k = B - 1 every other image/text is a negative, so the listwise softmax is the contrastive loss of the
    full fused matrix and ITM scores every pair: both can be recomputed from BridgeModel's pairwise scores."""
    batch = 4
    model = _pretraining_model(num_hard_negatives=batch - 1)
    pixel_values, input_ids, attention_mask = random_inputs(batch, batch)
    out = model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
    reference = _scoring_model(model)
    fused = reference(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask, score="fused")
    unimodal = reference(
        input_ids=input_ids,
        pixel_values=pixel_values,
        attention_mask=attention_mask,
        score="unimodal",
        return_loss=True,
    )
    assert out.unimodal_itc_loss.item() == pytest.approx(unimodal.loss.item(), abs=1e-5)
    assert out.cross_itc_loss.item() == pytest.approx(contrastive_loss(fused.logits_per_image).item(), abs=1e-5)
    match = fused.itm_logits[..., 1]
    off_diagonal = match[~torch.eye(batch, dtype=torch.bool)]
    # each off-diagonal pair is mined twice (once per anchor direction); the mean is unchanged
    assert out.itm_loss.item() == pytest.approx(match_loss(match.diagonal(), off_diagonal).item(), abs=1e-5)
    share = torch.sigmoid(model.itc_alpha.value)
    expected_itc = share * out.cross_itc_loss + (1 - share) * out.unimodal_itc_loss
    assert out.itc_loss.item() == pytest.approx(expected_itc.item(), abs=1e-6)
    assert out.loss.item() == pytest.approx((out.itc_loss + out.itm_loss).item(), abs=1e-6)
    assert out.itm_labels.tolist() == [1] * batch + [0] * (2 * batch * (batch - 1))


def test_aligned_objective_matches_the_original_recipe():
    """Cross ITC contrasts fused embeddings of aligned pairs; ITM negatives pair fused embeddings of two different
    aligned pairs, never interacted together."""
    batch = 3
    model = _pretraining_model(fused_objective="aligned", num_hard_negatives=batch - 1)
    pixel_values, input_ids, attention_mask = random_inputs(batch, batch)
    out = model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
    reference = _scoring_model(model)
    full = reference(
        input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask, output_hidden_states=True
    )
    index = torch.arange(batch)
    cross_image = full.cross_image_embeds[index, index]  # fused embeddings of the aligned pairs
    cross_text = full.cross_text_embeds[index, index]
    torch.testing.assert_close(out.cross_image_embeds, cross_image, atol=1e-5, rtol=0)
    scale = reference.logit_scale.value.exp()
    assert out.cross_itc_loss.item() == pytest.approx(
        contrastive_loss(scale * cross_image @ cross_text.t()).item(), abs=1e-5
    )
    positives = reference.itm_head(cross_image, cross_text)[:, 1]
    negatives = torch.stack(
        [reference.itm_head(cross_image[j], cross_text[i])[1] for i in range(batch) for j in range(batch) if j != i]
    )
    assert out.itm_loss.item() == pytest.approx(match_loss(positives, negatives).item(), abs=1e-5)


def test_mlm_mim_and_cycle_components_and_their_weights():
    model = _pretraining_model(mlm_loss_weight=0.5, mim_loss_weight=0.25, cycle_loss_weight=0.1)
    pixel_values, input_ids, attention_mask = random_inputs(3, 3)
    mlm_input_ids, mlm_labels = input_ids.clone(), torch.full_like(input_ids, -100)
    mlm_input_ids[:, 1], mlm_labels[:, 1] = 4, input_ids[:, 1]
    mim_mask = torch.zeros(3, 16, dtype=torch.bool)
    mim_mask[:, ::3] = True
    out = model(
        input_ids=input_ids,
        pixel_values=pixel_values,
        attention_mask=attention_mask,
        mlm_input_ids=mlm_input_ids,
        mlm_labels=mlm_labels,
        mim_mask=mim_mask,
    )
    assert out.mlm_loss.item() == pytest.approx(
        F.cross_entropy(out.mlm_logits[:, 1], input_ids[:, 1]).item(), abs=1e-5
    )
    bridge = model.bridge
    targets = bridge.get_image_features(pixel_values).last_hidden_state[:, 1:]  # the clean tower's patch features
    assert out.mim_loss.item() == pytest.approx(
        F.mse_loss(out.mim_logits[mim_mask], targets[mim_mask]).item(), abs=1e-5
    )
    # the cycle term: recomputed from the positives' attention maps of an independent interaction run
    text = bridge.get_text_features(input_ids, attention_mask)
    aligned = bridge.interact(
        bridge.get_image_features(pixel_values).last_hidden_state,
        text.last_hidden_state,
        attention_mask,
        output_attentions=True,
    )
    expected_cycle = cycle_consistency_loss(aligned.text_attentions, aligned.vision_attentions, attention_mask)
    assert out.cycle_loss.item() == pytest.approx(expected_cycle.item(), abs=1e-5)
    expected = out.itc_loss + out.itm_loss + 0.5 * out.mlm_loss + 0.25 * out.mim_loss + 0.1 * out.cycle_loss
    assert out.loss.item() == pytest.approx(expected.item(), abs=1e-5)


def test_identical_captions_are_never_mined_as_negatives():
    model = _pretraining_model(num_hard_negatives=2)
    pixel_values, input_ids, attention_mask = random_inputs(3, 3, pad_rows=())
    input_ids[1] = input_ids[0]  # texts 0 and 1 are the same caption
    out = model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
    labels = out.itm_labels.tolist()
    # anchors 0 and 1 each have one usable negative per direction (item 2), anchor 2 has two
    assert labels[:3] == [1, 1, 1]
    assert labels.count(-100) == 4 and labels.count(0) == 8


def test_every_trainable_parameter_gets_a_gradient_with_all_objectives():
    model = _pretraining_model(mlm_loss_weight=1.0, mim_loss_weight=1.0, cycle_loss_weight=1.0).train()
    pixel_values, input_ids, attention_mask = random_inputs(3, 3)
    mlm_labels = torch.full_like(input_ids, -100)
    mlm_labels[:, 0] = input_ids[:, 0]
    mim_mask = torch.zeros(3, 16, dtype=torch.bool)
    mim_mask[:, :4] = True
    model(
        input_ids=input_ids,
        pixel_values=pixel_values,
        attention_mask=attention_mask,
        mlm_input_ids=input_ids,
        mlm_labels=mlm_labels,
        mim_mask=mim_mask,
    ).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []


def test_pretraining_errors_name_the_problem():
    model = _pretraining_model(mlm_loss_weight=1.0)
    pixel_values, input_ids, attention_mask = random_inputs(2, 3)
    with pytest.raises(ValueError, match="2 images and 3 texts"):
        model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
    with pytest.raises(ValueError, match=r"needs both pixel_values \(or vision_hidden_state\) and input_ids"):
        model(input_ids=input_ids)
    with pytest.raises(ValueError, match="mlm_loss_weight > 0 needs `mlm_input_ids`"):
        model(input_ids=input_ids[:2], pixel_values=pixel_values, attention_mask=attention_mask[:2])
    off = _pretraining_model(itc_loss_weight=0.0, itm_loss_weight=0.0)
    with pytest.raises(ValueError, match="Every \\*_loss_weight in the config is 0"):
        off(input_ids=input_ids[:2], pixel_values=pixel_values, attention_mask=attention_mask[:2])
    with pytest.raises(ValueError, match="fused_objective"):
        make_config(fused_objective="global")
    with pytest.raises(ValueError, match="negative_mining"):
        make_config(negative_mining="random")


def test_pretraining_checkpoint_loads_as_bridge_model_and_back(tmp_path):
    from transformers import AutoModel, AutoModelForPreTraining

    model = _pretraining_model()
    model.save_pretrained(tmp_path)
    pixel_values, input_ids, attention_mask = random_inputs(2, 3)
    scoring = AutoModel.from_pretrained(tmp_path).eval()
    assert type(scoring) is BridgeModel
    expected = _scoring_model(model)(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
    got = scoring(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
    torch.testing.assert_close(got.logits_per_image, expected.logits_per_image, atol=0, rtol=0)
    reloaded = AutoModelForPreTraining.from_pretrained(tmp_path)
    assert type(reloaded) is BridgeForPreTraining
    for (name, a), (_, b) in zip(model.state_dict().items(), reloaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_pretraining_model_keeps_passed_towers_bit_for_bit():
    reference = BridgeModel(make_config())
    towers = {
        name: {k: v.clone() for k, v in getattr(reference, name).state_dict().items()}
        for name in ("vision_model", "text_model")
    }
    model = BridgeForPreTraining(
        reference.config, vision_model=reference.vision_model, text_model=reference.text_model
    )
    for name, expected in towers.items():
        for key, value in getattr(model.bridge, name).state_dict().items():
            assert torch.equal(value, expected[key]), f"{name}.{key}"
