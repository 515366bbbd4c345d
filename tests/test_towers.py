"""The tower geometry (towers_bridge.py): one case per tower family, each checked against the tower it describes
(built from its config, run on an image), and a family added as one table row (EfficientNet) working in BRIDGE."""

import pytest
import torch
from transformers import EfficientNetConfig

from conftest import IMAGE_SIZE, TEXT_CONFIGS, VISION_CONFIGS, make_config, random_inputs
from modeling_bridge import BridgeConfig, BridgeModel
from modeling_bridge.towers_bridge import ATTENTION_PROJECTIONS, TOWER_TYPES, TowerGeometry


def tiny_efficientnet_config() -> EfficientNetConfig:
    # width 0.05 scales the head convolution's 1280 channels to 64 (`hidden_dim` must equal them); a 32-pixel image
    # becomes an 8 x 8 map (stride 2 in the stem and in the second block).
    return EfficientNetConfig(
        image_size=IMAGE_SIZE,
        width_coefficient=0.05,
        in_channels=[32, 16],
        out_channels=[16, 24],
        kernel_sizes=[3, 3],
        strides=[1, 2],
        num_block_repeats=[1, 1],
        expand_ratios=[1, 6],
        depthwise_padding=[],
        hidden_dim=64,
        hidden_act="relu6",
    )


# family: (config, convolutional, token width, prefix tokens, tokens of a 32-pixel image)
VISION_CASES = {
    "vit": (VISION_CONFIGS["vit"], False, 32, 1, 17),
    "clip_vision_model": (VISION_CONFIGS["clip_vision_model"], False, 32, 1, 17),
    "siglip_vision_model": (VISION_CONFIGS["siglip_vision_model"], False, 32, 0, 16),
    "dinov2": (VISION_CONFIGS["dinov2"], False, 32, 1, 17),
    "resnet": (VISION_CONFIGS["resnet"], True, 32, 0, 16),
    "convnext": (VISION_CONFIGS["convnext"], True, 32, 0, 16),
    "efficientnet": (tiny_efficientnet_config, True, 64, 0, 64),
}


@pytest.mark.parametrize("family", VISION_CASES)
@torch.no_grad()
def test_the_geometry_of_each_vision_family_matches_its_tower(family):
    make, convolutional, width, prefix, tokens = VISION_CASES[family]
    config = make()
    geometry = TowerGeometry(config)
    assert (geometry.convolutional, geometry.hidden_size, geometry.num_prefix_tokens) == (convolutional, width, prefix)
    tower = geometry.build().eval()
    assert not any(name.startswith("pooler.") for name, _ in tower.named_parameters())  # BRIDGE pools on its own
    out = geometry.to_tokens(tower(pixel_values=torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE)).last_hidden_state)
    assert tuple(out.shape) == (1, tokens, width)
    if convolutional:
        assert geometry.image_size() is None and not geometry.attention_projections
        with pytest.raises(ValueError, match="set `num_vision_positions`"):
            geometry.num_positions()
    else:
        assert geometry.num_positions() == tokens and geometry.image_size() == (IMAGE_SIZE, IMAGE_SIZE)
        assert geometry.patch_grid() == (4, 4) and geometry.attention_projections == ATTENTION_PROJECTIONS


def test_the_text_families_position_limits():
    bert, roberta = TEXT_CONFIGS["bert"](), TEXT_CONFIGS["roberta"]()
    assert TowerGeometry(bert).max_text_length() == 64
    assert TowerGeometry(roberta).max_text_length() == 66 - (1 + 1)  # positions start after pad_token_id = 1
    assert TowerGeometry(bert).hidden_size == TowerGeometry(roberta).hidden_size == 24


def test_an_unlisted_family_is_read_by_structure():
    assert "regnet" not in TOWER_TYPES
    from transformers import RegNetConfig

    geometry = TowerGeometry(RegNetConfig(hidden_sizes=[8, 16]))
    assert geometry.convolutional and geometry.hidden_size == 16 and geometry.num_prefix_tokens == 0


def test_efficientnet_is_a_bridge_tower_from_its_table_row(tmp_path):
    config = BridgeConfig.from_vision_text_configs(
        tiny_efficientnet_config(),
        TEXT_CONFIGS["bert"](),
        num_vision_positions=64,
        num_interaction_layers=2,
        shared_dim=16,
        num_interaction_heads=2,
        projection_dim=8,
        max_text_positions=16,
    )
    torch.manual_seed(0)
    model = BridgeModel(config).eval()
    pixel_values, input_ids, attention_mask = random_inputs(2, 3)
    with torch.no_grad():
        scores = {
            score: model(
                pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask, score=score
            ).logits_per_image
            for score in ("unimodal", "fused", "itm")
        }
    assert all(tuple(s.shape) == (2, 3) and torch.isfinite(s).all() for s in scores.values())
    model.save_pretrained(tmp_path)
    again = BridgeModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        fused = again(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask).logits_per_image
    torch.testing.assert_close(fused, scores["fused"], rtol=0, atol=0)
    # no attention in the tower: a default LoRA adapts the interaction and the text tower only (peft: the [train]
    # extra, absent from `make test-oldest`'s model-test environment; `make test` runs this part)
    pytest.importorskip("peft")
    from modeling_bridge.training import default_lora_target_modules

    targets = default_lora_target_modules(model)
    assert targets and not any(t.startswith("vision_model.") for t in targets)
    assert any(t.startswith("text_model.") for t in targets)


def test_the_bridge_config_reads_the_geometry():
    config = make_config(vision="siglip_vision_model")
    assert config.num_vision_positions == 16  # no CLS token
    assert make_config().num_vision_positions == 17
