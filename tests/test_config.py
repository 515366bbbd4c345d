from pathlib import Path

import pytest
from transformers import AutoConfig, SiglipVisionConfig

from conftest import make_config
from modeling_bridge import BridgeConfig, BridgeModel


PRESETS = Path(__file__).resolve().parents[1] / "configuration"


def test_defaults_are_the_papers_base_model():
    config = BridgeConfig()
    assert (config.vision_config.model_type, config.text_config.model_type) == ("vit", "bert")
    assert (config.num_interaction_layers, config.shared_dim, config.num_interaction_heads) == (6, 768, 12)
    assert config.projection_dim == 256 and config.num_vision_positions == 14 * 14 + 1
    assert config.max_text_positions == 512 and config.default_score == "fused"


def test_nested_tower_configs_round_trip_through_dicts_and_auto_config(tmp_path):
    config = make_config(vision="siglip_vision_model", text="roberta", pooling="cls")
    assert isinstance(config.vision_config, SiglipVisionConfig)
    assert config.num_vision_positions == 16  # SigLIP has no CLS token
    config.save_pretrained(tmp_path)
    again = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(again, BridgeConfig)

    def strip(d):
        return {k: v for k, v in d.items() if k != "_name_or_path"}

    assert strip(again.to_dict()) == strip(config.to_dict())
    from_dict = BridgeConfig(vision_config=config.vision_config.to_dict(), text_config=config.text_config.to_dict())
    assert from_dict.vision_config.model_type == "siglip_vision_model"


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("num_interaction_layers", 0, "num_interaction_layers=0: must be a positive integer"),
        ("shared_dim", 30, "shared_dim=30: must be divisible by num_interaction_heads=4"),
        ("attention_dropout", 1.5, r"attention_dropout=1.5: must be a probability"),
        ("pooling", "avg", r"pooling='avg': must be one of \('mean', 'cls', 'max'\)"),
        ("default_score", "cross", "default_score='cross': must be one of"),
        ("cross_embed_source", "last", "cross_embed_source='last': must be one of"),
        ("init_temperature", 0.0, "init_temperature=0.0: must be > 0"),
        ("pair_chunk_size", 0, "pair_chunk_size=0: must be a positive integer"),
    ],
)
def test_invalid_values_name_the_field(field, value, message):
    fields = dict(shared_dim=32, num_interaction_heads=4)
    fields[field] = value
    with pytest.raises(ValueError, match=message):
        make_config(**fields)


def test_unknown_vision_layout_asks_for_num_vision_positions():
    with pytest.raises(ValueError, match="set `num_vision_positions`"):
        BridgeConfig(vision_config={"model_type": "bert", "hidden_size": 32}, text_config={"model_type": "bert"})
    config = BridgeConfig(vision_config={"model_type": "bert", "hidden_size": 32}, num_vision_positions=10)
    assert config.num_vision_positions == 10


@pytest.mark.parametrize("name", ["bridge-tiny", "bridge-base"])
def test_presets_load_as_bridge_configs(name):
    config = BridgeConfig.from_json_file(PRESETS / f"{name}.json")
    assert isinstance(config, BridgeConfig)
    assert config.vision_config.model_type == "vit" and config.text_config.model_type == "bert"
    if name == "bridge-base":
        assert (config.vision_config.hidden_size, config.vision_config.patch_size, config.text_config.hidden_size) == (
            768,
            16,
            768,
        )
        assert (
            config.num_interaction_layers,
            config.shared_dim,
            config.num_interaction_heads,
            config.projection_dim,
        ) == (6, 768, 12, 256)
    else:
        model = BridgeModel(config)
        assert sum(p.numel() for p in model.parameters()) < 5_000_000
