"""Tiny BRIDGE models built from configs in code: no downloads."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    BertConfig,
    BertTokenizer,
    CLIPVisionConfig,
    ConvNextConfig,
    Dinov2Config,
    ResNetConfig,
    RobertaConfig,
    SiglipVisionConfig,
    ViTConfig,
    ViTImageProcessor,
)

from modeling_bridge import BridgeConfig, BridgeModel, BridgeProcessor


IMAGE_SIZE = 32

# Prepended to scripts run in a subprocess that must load BRIDGE as Hub remote code: an installed `modeling_bridge`
# would otherwise win over the code files saved next to the weights.
BLOCK_PACKAGE_PRELUDE = """import importlib.abc, sys
class NoPackage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "modeling_bridge":
            raise ImportError("modeling_bridge is not importable in this process")
sys.meta_path.insert(0, NoPackage())
"""


def run_as_hub_code(tmp_path, source: str, *args) -> dict:
    """Run `source` in a fresh Python where `modeling_bridge` cannot be imported (so BRIDGE comes from the Hub code
    files of a saved folder), offline, with `sys.argv[1:] = args` and `sys.argv[-1]` a JSON file the script writes;
    return what it wrote."""
    script, out = tmp_path / "hub_code_script.py", tmp_path / "hub_code_out.json"
    script.write_text(BLOCK_PACKAGE_PRELUDE + textwrap.dedent(source))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    done = subprocess.run(
        [sys.executable, str(script), *map(str, args), str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


VOCAB = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "a",
    "photo",
    "of",
    "this",
    "is",
    "red",
    "green",
    "blue",
    "circle",
    "square",
    "triangle",
    "left",
    "right",
    "big",
    "small",
    ".",
]

_TOWER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)

VISION_CONFIGS = {
    "vit": lambda: ViTConfig(**_TOWER, image_size=IMAGE_SIZE, patch_size=8),
    "clip_vision_model": lambda: CLIPVisionConfig(**_TOWER, image_size=IMAGE_SIZE, patch_size=8),
    "siglip_vision_model": lambda: SiglipVisionConfig(**_TOWER, image_size=IMAGE_SIZE, patch_size=8),
    "dinov2": lambda: Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2, image_size=IMAGE_SIZE, patch_size=8
    ),
    # Convolutional towers: a 32-pixel image becomes a 4 x 4 map of 32 channels (16 tokens, no CLS).
    "resnet": lambda: ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic"),
    "convnext": lambda: ConvNextConfig(num_stages=2, patch_size=4, hidden_sizes=[16, 32], depths=[1, 1]),
}
# Tokens per IMAGE_SIZE image of the towers whose count a config cannot give (convolutional: the map's cells).
CONV_VISION_POSITIONS = {"resnet": (IMAGE_SIZE // 8) ** 2, "convnext": (IMAGE_SIZE // 8) ** 2}
TEXT_CONFIGS = {
    "bert": lambda: BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=24,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=64,
    ),
    "roberta": lambda: RobertaConfig(
        vocab_size=len(VOCAB),
        hidden_size=24,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=66,
        pad_token_id=1,
    ),
}


def make_config(vision="vit", text="bert", **overrides) -> BridgeConfig:
    fields = dict(
        num_interaction_layers=2,
        shared_dim=16,
        num_interaction_heads=2,
        projection_dim=8,
        max_text_positions=16,
        pair_chunk_size=3,
        interaction_dropout=0.0,
        attention_dropout=0.0,
    )
    if vision in CONV_VISION_POSITIONS:
        fields["num_vision_positions"] = CONV_VISION_POSITIONS[vision]
    fields.update(overrides)
    return BridgeConfig.from_vision_text_configs(VISION_CONFIGS[vision](), TEXT_CONFIGS[text](), **fields)


def make_model(seed=0, randomize=True, **overrides) -> BridgeModel:
    """A tiny model in eval mode. `randomize` perturbs the zero/constant-initialised parameters (biases, positional
    tables, gates) so that every parameter influences the scores in the tests."""
    torch.manual_seed(seed)
    model = BridgeModel(make_config(**overrides))
    if randomize:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if not name.startswith(("vision_model.", "text_model.")):
                    param.add_(torch.randn_like(param) * 0.1)
    return model.eval()


@pytest.fixture
def model():
    return make_model()


@pytest.fixture
def processor():
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)})
    image_processor = ViTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return BridgeProcessor(image_processor=image_processor, tokenizer=tokenizer)


def random_images(n, mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": None}[mode]
    shape = (40, 48) if channels is None else (40, 48, channels)
    return [Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode) for _ in range(n)]


def random_inputs(n_images=4, n_texts=5, length=7, seed=0, pad_rows=(1, 3)):
    """pixel_values (n_images, 3, 32, 32), input_ids / attention_mask (n_texts, length) with some padded rows."""
    g = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(n_images, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)
    input_ids = torch.randint(5, len(VOCAB), (n_texts, length), generator=g)
    attention_mask = torch.ones(n_texts, length, dtype=torch.long)
    for k, row in enumerate(r for r in pad_rows if r < n_texts):
        attention_mask[row, length - 2 - k :] = 0
        input_ids[row, length - 2 - k :] = 0
    return pixel_values, input_ids, attention_mask


# `make test-fast` (pytest -m "not slow") leaves out the modules that run commands, subprocesses, DDP workers, wheel
# builds and the example pipelines: the model, data and library tests in about a minute. `make test` and CI run all.
SLOW_MODULES = {
    "test_dependencies",
    "test_distributed",
    "test_example_errors",
    "test_examples",
    "test_hub",
    "test_packaging",
    "test_performance",
    "test_push_to_hub",
    "test_readme",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__ in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
