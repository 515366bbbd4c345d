"""The loss module (loss_bridge.py): each loss function against a hand-computed value, the mining, and the
pre-training objective object. The model-level pre-training tests are in test_pretraining.py."""

import math

import pytest
import torch

from conftest import make_config, random_inputs
from modeling_bridge import BridgeForPreTraining
from modeling_bridge.loss_bridge import (
    BridgePreTrainingLoss,
    HardNegativeMiner,
    cycle_consistency_loss,
    listwise_loss,
    mask_image_patches,
    masked_patch_loss,
    masked_token_loss,
    match_loss,
    mine_hard_negatives,
)


def test_match_loss_hand_computed():
    # (mean(-log s(0), -log s(2)) + -log(1 - s(1))) / 2 = ((ln 2 + ln(1 + e^-2)) / 2 + ln(1 + e)) / 2
    value = match_loss(torch.tensor([0.0, 2.0]), torch.tensor([1.0]))
    assert value.item() == pytest.approx(((0.693147 + 0.126928) / 2 + 1.313262) / 2, abs=1e-5)
    # an invalid negative is left out of the negative mean
    value = match_loss(torch.tensor([0.0]), torch.tensor([1.0, 50.0]), torch.tensor([True, False]))
    assert value.item() == pytest.approx((0.693147 + 1.313262) / 2, abs=1e-5)


def test_listwise_loss_hand_computed():
    # -log(e^2 / (e^2 + e^1 + e^0)) = ln(1 + e^-1 + e^-2)
    value = listwise_loss(torch.tensor([2.0]), torch.tensor([[1.0, 0.0]]))
    assert value.item() == pytest.approx(math.log(1 + math.exp(-1) + math.exp(-2)), abs=1e-6)
    value = listwise_loss(torch.tensor([2.0]), torch.tensor([[1.0, 0.0]]), torch.tensor([[True, False]]))
    assert value.item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)


def test_cycle_loss_hand_computed():
    nt, nv = 4, 9
    text = torch.full((1, 2, nt, nv), 1 / nv)  # every text token spreads evenly over the image
    vision = torch.full((1, 2, nv, nt), 1 / nt)
    # diag(P_tv P_vt) = 1/nt, diag(P_vt P_tv) = 1/nv  ->  (ln nt + ln nv) / 2
    assert cycle_consistency_loss((text,), (vision,)).item() == pytest.approx(math.log(6.0), abs=1e-6)
    # two real text tokens of four: the vision side attends only to them; padded rows leave the text term
    mask = torch.tensor([[1, 1, 0, 0]])
    vision_masked = torch.zeros(1, 2, nv, nt)
    vision_masked[..., :2] = 0.5
    value = cycle_consistency_loss((text,), (vision_masked,), mask)
    assert value.item() == pytest.approx((math.log(2) + math.log(nv)) / 2, abs=1e-6)
    # a perfect cycle costs nothing; the loss averages over layers
    eye = torch.eye(3)[None, None]
    assert cycle_consistency_loss((eye, eye), (eye, eye)).item() == pytest.approx(0.0, abs=1e-6)


def test_masked_patch_and_token_losses_hand_computed():
    predictions = torch.zeros(1, 3, 2)
    targets = torch.tensor([[[1.0, 1.0], [5.0, 5.0], [3.0, 1.0]]])
    mask = torch.tensor([[True, False, True]])
    # masked features: (1, 1) and (3, 1) -> squared errors 1, 1, 9, 1 -> mean 3; the unmasked patch is ignored
    assert masked_patch_loss(predictions, targets, mask).item() == pytest.approx(3.0)
    logits = torch.zeros(1, 3, 7)  # uniform over 7 tokens
    labels = torch.tensor([[-100, 4, 2]])
    assert masked_token_loss(logits, labels).item() == pytest.approx(math.log(7), abs=1e-6)
    assert masked_token_loss(logits, torch.full((1, 3), -100)).item() == 0.0  # nothing masked: 0, not NaN


def test_mask_image_patches_zeroes_exactly_the_masked_patches():
    pixels = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, 0] = mask[1, 5] = True  # patch 5 = row 1, column 1 of the 4x4 grid
    out = mask_image_patches(pixels, mask, 8)
    assert (out[0, :, :8, :8] == 0).all() and (out[1, :, 8:16, 8:16] == 0).all()
    changed = (out != pixels).any(1)
    assert changed.sum() == 2 * 64
    with pytest.raises(ValueError, match=r"mim_mask has shape \(2, 15\).*\(2, 16\)"):
        mask_image_patches(pixels, mask[:, :15], 8)


def test_mining_prefers_the_semi_hard_band_then_the_hardest():
    sim = torch.tensor(
        [
            [0.9, 0.8, 0.6, 0.5, -0.2],  # positive 0.9: band (0.4, 0.7) = {2, 3}; next hardest is 1
            [0.1, 1.0, 0.2, 0.3, 0.9],  # positive 1.0: band (0.5, 0.8) empty -> hardest 4, 3
        ]
    )
    torch.manual_seed(0)
    index, valid = mine_hard_negatives(sim, torch.tensor([0, 1]), 3, margin_min=0.2, margin_max=0.5)
    assert set(index[0, :2].tolist()) == {2, 3} and index[0, 2] == 1
    assert index[1].tolist() == [4, 3, 2]
    assert valid.all()
    # excluded candidates (e.g. identical captions) are never picked; slots without a candidate are invalid
    exclude = torch.tensor([[False, True, True, True, False], [False] * 5])
    index, valid = mine_hard_negatives(sim, torch.tensor([0, 1]), 2, 0.2, 0.5, exclude)
    assert valid[0].tolist() == [True, False] and index[0, 0] == 4
    assert index[1].tolist() == [4, 3]
    # without the band: simply the most similar candidates (anchor 0: 1, 2, 3)
    index, valid = mine_hard_negatives(sim, torch.tensor([0, 1]), 3, 0.2, 0.5, semi_hard=False)
    assert index.tolist() == [[1, 2, 3], [4, 3, 2]] and valid.all()


def test_the_miner_reads_its_strategy_from_the_config():
    similarity = torch.tensor([[1.0, 0.9, 0.6, 0.4, 0.1], [0.2, 1.0, 0.7, 0.65, 0.95]])
    positive = torch.tensor([0, 1])
    for mining, hardest in (("semi_hard", 0), ("semi_hard", 1), ("hardest", 0)):
        config = make_config(num_hard_negatives=3, num_hardest_negatives=hardest, negative_mining=mining)
        miner = HardNegativeMiner.from_config(config, generator=torch.Generator().manual_seed(0))
        expected = mine_hard_negatives(
            similarity,
            positive,
            3,
            config.itm_margin_min,
            config.itm_margin_max,
            semi_hard=mining == "semi_hard",
            generator=torch.Generator().manual_seed(0),
            num_hardest=hardest,
        )
        got = miner(similarity, positive)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    hardest_first = HardNegativeMiner.from_config(make_config(num_hard_negatives=2, negative_mining="hardest"))
    assert hardest_first(similarity, positive)[0].tolist() == [[1, 2], [4, 2]]


def test_the_pretraining_loss_object_is_the_weighted_sum_of_the_terms_the_config_enables():
    torch.manual_seed(0)
    config = make_config(mlm_loss_weight=0.5, mim_loss_weight=0.25, cycle_loss_weight=0.1, num_hard_negatives=2)
    model = BridgeForPreTraining(config).eval()
    pixel_values, input_ids, attention_mask = random_inputs(3, 3)
    mlm_labels = torch.full_like(input_ids, -100)
    mlm_labels[:, 1] = input_ids[:, 1]
    inputs = dict(
        input_ids=input_ids,
        attention_mask=attention_mask,
        pixel_values=pixel_values,
        mlm_input_ids=input_ids.masked_fill(mlm_labels != -100, 4),
        mlm_labels=mlm_labels,
        mim_mask=torch.arange(16).repeat(3, 1) % 3 == 0,
    )
    with torch.no_grad():
        out = model(**inputs)
        vision = model.bridge.get_image_features(pixel_values)
        text = model.bridge.get_text_features(input_ids, attention_mask)
        scale = model.bridge.logit_scale().exp()
        per_image = scale * vision.pooler_output @ text.pooler_output.t()
        targets = torch.arange(3)
        generator = torch.Generator().manual_seed(model.eval_mining_seed)  # the model's eval-mode mining
        fields = BridgePreTrainingLoss(config, generator)(
            model, vision, text, inputs, per_image, per_image.t(), targets, scale, output_attentions=False
        )
    weights = {"itc": 1.0, "itm": 1.0, "mlm": 0.5, "mim": 0.25, "cycle": 0.1}
    assert {k for k in fields if k.endswith("_loss")} == {f"{n}_loss" for n in weights} | {
        "unimodal_itc_loss",
        "cross_itc_loss",
    }
    expected = sum(w * fields[f"{n}_loss"] for n, w in weights.items())
    torch.testing.assert_close(fields["loss"], expected, rtol=1e-6, atol=1e-6)
    for name in ("loss", *(f"{n}_loss" for n in weights)):  # the object is what forward computes
        torch.testing.assert_close(fields[name], getattr(out, name), rtol=1e-6, atol=1e-6)
    config.cycle_loss_weight = 0.0  # weights are read at each call: a zero weight drops the term
    with torch.no_grad():
        fields = BridgePreTrainingLoss(config, torch.Generator().manual_seed(0))(
            model, vision, text, inputs, per_image, per_image.t(), targets, scale, output_attentions=False
        )
    assert "cycle_loss" not in fields
    torch.testing.assert_close(
        fields["loss"], sum(w * fields[f"{n}_loss"] for n, w in weights.items() if n != "cycle"), rtol=1e-6, atol=1e-6
    )
