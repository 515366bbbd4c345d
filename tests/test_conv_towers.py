"""Convolutional vision towers (transformers' ResNet / ConvNeXt): the last feature map read as a token grid."""

import pytest
import torch

from conftest import (
    CONV_VISION_POSITIONS,
    IMAGE_SIZE,
    TEXT_CONFIGS,
    VISION_CONFIGS,
    make_config,
    make_model,
    random_inputs,
)
from modeling_bridge import BridgeConfig, BridgeForPreTraining, BridgeModel
from modeling_bridge.data import BridgeDataCollator
from modeling_bridge.data.collator import num_patch_tokens
from modeling_bridge.towers_bridge import TowerGeometry
from modeling_bridge.training import set_tower_trainable_blocks


@pytest.mark.parametrize("vision", sorted(CONV_VISION_POSITIONS))
@torch.no_grad()
def test_feature_map_becomes_raster_order_tokens(vision):
    model = make_model(vision=vision)
    pixel_values, _, _ = random_inputs(2, 1)
    feature_map = model.vision_model(pixel_values).last_hidden_state  # (B, C, H, W)
    assert feature_map.dim() == 4
    states = model.get_image_features(pixel_values).last_hidden_state
    channels, height, width = feature_map.shape[1:]
    assert states.shape == (2, height * width, channels) == (2, CONV_VISION_POSITIONS[vision], 32)
    # token r * W + c is the cell in row r, column c
    torch.testing.assert_close(states[:, 1 * width + 2], feature_map[:, :, 1, 2], rtol=0, atol=0)
    torch.testing.assert_close(states[:, -1], feature_map[:, :, -1, -1], rtol=0, atol=0)


@pytest.mark.parametrize("vision", sorted(CONV_VISION_POSITIONS))
def test_conv_tower_round_trip(vision, tmp_path):
    model = make_model(vision=vision)
    pixel_values, input_ids, attention_mask = random_inputs(2, 3)
    with torch.no_grad():
        before = model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
    model.save_pretrained(tmp_path)
    reloaded = BridgeModel.from_pretrained(tmp_path).eval()
    assert reloaded.config.num_vision_positions == CONV_VISION_POSITIONS[vision]
    with torch.no_grad():
        after = reloaded(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
    torch.testing.assert_close(after.logits_per_image, before.logits_per_image)


def test_conv_tower_needs_num_vision_positions():
    with pytest.raises(ValueError, match=r"convolutional vision tower \('resnet'\).*set `num_vision_positions`"):
        BridgeConfig.from_vision_text_configs(VISION_CONFIGS["resnet"](), TEXT_CONFIGS["bert"]())


def test_conv_tower_token_count_is_checked():
    """A conv tower accepts any image size; a size that gives another grid than the model was built for would
    misalign the positional-bias table, so it is an error naming both counts."""
    model = make_model(vision="resnet")
    pixel_values = torch.randn(1, 3, 2 * IMAGE_SIZE, 2 * IMAGE_SIZE)
    with pytest.raises(ValueError, match=r"into 64 tokens, but the model was built for num_vision_positions=16"):
        model.get_image_features(pixel_values)


def test_conv_tower_pretraining_with_every_objective(processor):
    """MIM masks the image area of each feature-map cell (8 x 8 pixels here); every loss is finite and reaches the
    interaction layers and the tower."""
    from conftest import VOCAB

    config = make_config(
        vision="resnet", mlm_loss_weight=1.0, mim_loss_weight=1.0, cycle_loss_weight=0.5, num_hard_negatives=2
    )
    assert num_patch_tokens(config) == 16
    torch.manual_seed(0)
    model = BridgeForPreTraining(config).train()
    collator = BridgeDataCollator.for_model(processor, config, mlm_probability=0.3, mim_probability=0.25)
    assert collator.num_patches == 16
    pixel_values, input_ids, attention_mask = random_inputs(3, 3)
    mim_mask = torch.zeros(3, 16, dtype=torch.bool)
    mim_mask[:, [0, 5]] = True
    mlm_labels = torch.full_like(input_ids, -100)
    mlm_labels[:, 1] = input_ids[:, 1]
    mlm_input_ids = input_ids.clone()
    mlm_input_ids[:, 1] = VOCAB.index("[MASK]")
    out = model(
        input_ids=input_ids,
        pixel_values=pixel_values,
        attention_mask=attention_mask,
        mlm_input_ids=mlm_input_ids,
        mlm_labels=mlm_labels,
        mim_mask=mim_mask,
    )
    for name in ("itc_loss", "itm_loss", "mlm_loss", "mim_loss", "cycle_loss"):
        assert torch.isfinite(getattr(out, name)), name
    out.loss.backward()
    assert model.bridge.interaction_layers[0].vision_to_shared.weight.grad.abs().sum() > 0
    assert model.bridge.vision_model.embedder.embedder.convolution.weight.grad.abs().sum() > 0


def test_masked_pixels_of_a_conv_cell():
    config = make_config(vision="resnet")
    geometry = TowerGeometry(config.vision_config)
    assert geometry.mim_patch_size((IMAGE_SIZE, IMAGE_SIZE), config.num_vision_positions) == (8, 8)
    with pytest.raises(ValueError, match="needs a square map whose side divides the image"):
        geometry.mim_patch_size((30, 30), config.num_vision_positions)


def test_top_stages_of_a_resnet_train():
    model = make_model(vision="resnet")
    tower = model.vision_model
    set_tower_trainable_blocks(tower, 1, "vision")
    trainable = {n.split(".")[2] for n, p in tower.named_parameters() if p.requires_grad and n.startswith("encoder.")}
    assert trainable == {"1"}  # the last of the two stages
    assert not any(p.requires_grad for p in tower.embedder.parameters())


def test_lora_defaults_leave_a_conv_tower_out():
    from modeling_bridge.training import default_lora_target_modules

    targets = default_lora_target_modules(make_model(vision="resnet"))
    assert not any(t.startswith("vision_model.") for t in targets)
    assert any(t.startswith("text_model.") for t in targets) and any(".q_proj" in t for t in targets)


def test_a_frozen_conv_tower_keeps_its_batch_norm_statistics():
    """Train mode would update a frozen ResNet's running statistics from every batch; they stay fixed unless the
    tower trains."""
    model = BridgeForPreTraining(make_config(vision="resnet"))
    tower = model.bridge.vision_model
    set_tower_trainable_blocks(tower, 0)
    norm = tower.embedder.embedder.normalization
    before = norm.running_mean.clone()
    pixel_values, input_ids, attention_mask = random_inputs(2, 2)
    model.train()
    assert model.bridge.interaction_layers.training and not norm.training and not tower.training
    model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
    assert torch.equal(norm.running_mean, before)
    set_tower_trainable_blocks(tower, -1)
    model.train()
    assert norm.training
    model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
    assert not torch.equal(norm.running_mean, before)
