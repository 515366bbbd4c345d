"""The pre-training example end to end on a tiny model: trains, saves atomically, resumes, evaluates."""

import dataclasses
import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModel

from conftest import make_config
from modeling_bridge import BridgeModel
from modeling_bridge.training import load_training_stage


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import run_pretraining  # noqa: E402


@pytest.fixture
def tiny_source(tmp_path, processor):
    make_config().to_json_file(tmp_path / "bridge.json")
    stage_b = dataclasses.asdict(load_training_stage("b"))
    stage_b.update(vision_trainable_blocks=1, text_trainable_blocks=1)  # the tiny towers have 2 blocks
    (tmp_path / "stage_b_tiny.json").write_text(json.dumps(stage_b))
    processor.save_pretrained(tmp_path / "processor")
    return tmp_path


def _args(source, output_dir, *extra):
    return [
        "--config_name",
        str(source / "bridge.json"),
        "--processor_name_or_path",
        str(source / "processor"),
        "--dataset",
        "bridge-shapes",
        "--shapes_num_train",
        "16",
        "--shapes_image_size",
        "32",
        "--output_dir",
        str(output_dir),
        "--per_device_train_batch_size",
        "4",
        "--report_to",
        "none",
        "--use_cpu",
        "true",
        "--disable_tqdm",
        "true",
        "--seed",
        "0",
        *extra,
    ]


def test_stage_b_run_saves_a_model_that_auto_loads_and_reports_every_component(tiny_source, tmp_path):
    out = tmp_path / "run"
    trainer = run_pretraining.main(
        _args(
            tiny_source,
            out,
            "--stage",
            str(tiny_source / "stage_b_tiny.json"),
            "--max_steps",
            "2",
            "--logging_steps",
            "1",
            "--eval_split",
            "test",
            "--max_eval_samples",
            "8",
        )
    )
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert {"itc_loss", "itm_loss", "mlm_loss", "mim_loss", "cycle_loss"} <= set(logged[-1])
    evaluated = [entry for entry in trainer.state.log_history if "eval_loss" in entry]
    assert evaluated and math.isfinite(evaluated[-1]["eval_loss"])
    assert trainer.args.learning_rate == 5e-5 and trainer.args.weight_decay == 0.05  # stage b's recipe
    assert trainer.args.warmup_steps == load_training_stage("b").warmup_ratio  # a fraction: the v5 spelling
    model = AutoModel.from_pretrained(out / "model")
    assert type(model) is BridgeModel and model.config.mlm_loss_weight == 0.5  # stage b's weights were saved
    trained = trainer.model.bridge.state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, trained[name]), name
    assert not [p for p in os.listdir(tmp_path / "run") if p.startswith(".")]  # no staging folder left


def test_resume_from_checkpoint_continues_the_run(tiny_source, tmp_path):
    out = tmp_path / "run"
    run_pretraining.main(_args(tiny_source, out, "--max_steps", "2", "--save_steps", "2"))
    trainer = run_pretraining.main(
        _args(
            tiny_source,
            out,
            "--max_steps",
            "4",
            "--save_steps",
            "2",
            "--resume_from_checkpoint",
            "True",
            "--learning_rate",
            "3e-4",
        )
    )
    assert trainer.state.global_step == 4
    assert trainer.args.learning_rate == 3e-4  # a command-line value wins over the stage's
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4


def test_bad_model_arguments_are_named(tiny_source, tmp_path):
    with pytest.raises(ValueError, match="exactly one of"):
        run_pretraining.main(_args(tiny_source, tmp_path, "--model_name_or_path", str(tmp_path)))
    with pytest.raises(ValueError, match="--vision_model and --text_model go together"):
        run_pretraining.main(["--vision_model", "x", "--output_dir", str(tmp_path)])


def test_stage_a_on_cached_tower_states(tiny_source, tmp_path):
    """--tower_state_cache: the towers run once into a datasets folder, the run trains on it, and a second run
    (the next stage A epochs) reuses the folder. Stages that train a tower or need MLM / MIM are refused."""
    cache = tmp_path / "states"
    argv = [
        *_args(tiny_source, tmp_path / "run", "--max_steps", "2", "--eval_split", "test", "--max_eval_samples", "8"),
        "--tower_state_cache",
        str(cache),
    ]
    trainer = run_pretraining.main(argv)
    assert math.isfinite(trainer.state.log_history[-1]["eval_loss"])
    info = cache / "train" / "bridge_tower_cache.json"
    assert info.is_file() and (cache / "eval" / "bridge_tower_cache.json").is_file()
    assert set(trainer.train_dataset.column_names) >= {"vision_hidden_state", "text_hidden_state"}
    stamp = info.stat().st_mtime_ns
    # The next run starts from the saved model: its towers are the same (frozen), so the cache is reused.
    again = [*argv[2:], "--model_name_or_path", str(tmp_path / "run" / "model"), "--output_dir", str(tmp_path / "b")]
    run_pretraining.main(again)
    assert info.stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="--tower_state_cache needs frozen towers, but this stage trains the vision"):
        run_pretraining.main([*_args(tiny_source, tmp_path / "c", "--stage", "c"), "--tower_state_cache", str(cache)])


@pytest.fixture
def tower_dirs(tmp_path, processor):
    from transformers import AutoModel

    from conftest import TEXT_CONFIGS, VISION_CONFIGS

    AutoModel.from_config(VISION_CONFIGS["vit"]()).save_pretrained(tmp_path / "vit")
    processor.image_processor.save_pretrained(tmp_path / "vit")
    AutoModel.from_config(TEXT_CONFIGS["bert"]()).save_pretrained(tmp_path / "bert")
    processor.tokenizer.save_pretrained(tmp_path / "bert")
    return tmp_path / "vit", tmp_path / "bert"


def _short(output_dir, *extra):
    return [
        "--dataset",
        "bridge-shapes",
        "--shapes_num_train",
        "8",
        "--shapes_image_size",
        "32",
        "--output_dir",
        str(output_dir),
        "--per_device_train_batch_size",
        "4",
        "--max_steps",
        "1",
        "--report_to",
        "none",
        "--use_cpu",
        "true",
        "--disable_tqdm",
        "true",
        "--save_strategy",
        "no",
        *extra,
    ]


def test_config_overrides_size_the_interaction_of_every_model_source(tiny_source, tower_dirs, tmp_path):
    vit, bert = tower_dirs
    size = {"num_interaction_layers": 1, "shared_dim": 24, "num_interaction_heads": 4, "max_text_positions": 12}
    run_pretraining.main(
        _short(
            tmp_path / "towers",
            "--vision_model",
            str(vit),
            "--text_model",
            str(bert),
            "--config_overrides",
            json.dumps(size),
        )
    )
    saved = json.loads((tmp_path / "towers" / "model" / "config.json").read_text())
    assert {k: saved[k] for k in size} == size

    run_pretraining.main(
        _short(
            tmp_path / "random",
            "--config_name",
            str(tiny_source / "bridge.json"),
            "--processor_name_or_path",
            str(tiny_source / "processor"),
            "--config_overrides",
            json.dumps(size),
        )
    )
    saved = json.loads((tmp_path / "random" / "model" / "config.json").read_text())
    assert {k: saved[k] for k in size} == size

    # A saved model takes the fields that keep its weights' shapes; --num_hard_negatives wins over the JSON.
    trainer = run_pretraining.main(
        _short(
            tmp_path / "again",
            "--model_name_or_path",
            str(tmp_path / "towers" / "model"),
            "--config_overrides",
            '{"negative_mining": "hardest", "num_hard_negatives": 1}',
            "--num_hard_negatives",
            "2",
        )
    )
    assert (trainer.model.config.negative_mining, trainer.model.config.num_hard_negatives) == ("hardest", 2)
    saved = json.loads((tmp_path / "again" / "model" / "config.json").read_text())
    assert (saved["negative_mining"], saved["num_hard_negatives"], saved["shared_dim"]) == ("hardest", 2, 24)


def test_lora_example_masks_patches_of_rectangular_images(tmp_path):
    """MIM on a vision tower with (height, width) image and patch sizes: num_patches comes from the config."""
    import importlib.util

    from transformers import BertTokenizer, ViTConfig, ViTImageProcessor

    from conftest import TEXT_CONFIGS, VOCAB
    from modeling_bridge import BridgeConfig, BridgeForPreTraining, BridgeProcessor

    spec = importlib.util.spec_from_file_location(
        "run_lora_finetuning", Path(run_pretraining.__file__).parent / "run_lora_finetuning.py"
    )
    run_lora = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = run_lora
    try:
        spec.loader.exec_module(run_lora)
    finally:
        del sys.modules[spec.name]
    vision = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=(32, 48),
        patch_size=(8, 16),
    )
    config = BridgeConfig.from_vision_text_configs(
        vision,
        TEXT_CONFIGS["bert"](),
        num_interaction_layers=1,
        shared_dim=16,
        num_interaction_heads=2,
        projection_dim=8,
        max_text_positions=16,
        mim_loss_weight=0.5,
    )
    torch.manual_seed(0)
    BridgeForPreTraining(config).save_pretrained(tmp_path / "base")
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)})
    image_processor = ViTImageProcessor(size={"height": 32, "width": 48})
    BridgeProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(tmp_path / "base")
    results = run_lora.main(["--model_name_or_path", str(tmp_path / "base"), *_short(tmp_path / "lora")])
    assert math.isfinite(results["train"]["train_loss"])
    assert (tmp_path / "lora" / "adapter" / "adapter_model.safetensors").is_file()


def test_demo_scores_galleries_without_tokenizer_warnings(processor):
    """The demo's MiniLM tokenizer carries a saved `max_length` (tokenizer.json truncation settings); every
    processor call that left truncation unset warned that it is ignored."""
    import warnings

    import run_demo
    from transformers import BertTokenizer

    from conftest import VOCAB, make_model, random_images
    from modeling_bridge import BridgeProcessor

    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)}, model_max_length=32, max_length=128)
    saved_max_length = BridgeProcessor(image_processor=processor.image_processor, tokenizer=tokenizer)
    images, captions = random_images(3), ["a red circle", "a blue square", "a green triangle"]
    bridge = make_model(vision="resnet")
    dual = run_demo.DualEncoder(bridge.vision_model, bridge.text_model, 8).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scores = run_demo.score_matrices(bridge, dual, saved_max_length, images, captions)
    assert set(scores) == {"bridge_unimodal", "bridge_fused", "bridge_itm", "dual_encoder"}
    assert all(matrix.shape == (3, 3) for matrix in scores.values())


def test_twin_scores_follow_winoground():
    import run_demo

    # images 0/1 are twins, 2/3 are twins; rows are images, columns captions
    scores = torch.tensor(
        [
            [0.9, 0.1, 0.0, 0.0],  # image 0 prefers caption 0
            [0.5, 0.6, 0.0, 0.0],  # image 1 prefers caption 1; caption 0 prefers image 0 (0.9 > 0.5)
            [0.0, 0.0, 0.4, 0.7],  # image 2 prefers caption 3: text score fails for this pair
            [0.0, 0.0, 0.3, 0.8],  # caption 2 prefers image 2 (0.4 > 0.3), caption 3 prefers image 3 (0.8 > 0.7)
        ]
    )
    got = run_demo.twin_scores(scores, [1, 0, 3, 2])
    assert got == {"twin_text": 0.5, "twin_image": 1.0, "twin_group": 0.5}
    assert run_demo.recall_at_1(scores) == (1.0, 0.75)


def test_demo_runs_end_to_end_and_reuses_its_caches(tmp_path):
    """A miniature `make demo`: pre-stage, cached tower states, both models, reload, pipeline, results and figure.
    The second run reuses the pre-stage tower and the state cache instead of recomputing them."""
    import run_demo

    argv = ["--output_dir", str(tmp_path), "--num_train", "64", "--max_steps", "2", "--batch_size", "8"]
    results = run_demo.main([*argv, "--tower_steps", "2"])
    assert set(results) == {"bridge_unimodal", "bridge_fused", "bridge_itm", "dual_encoder"}
    for row in results.values():
        assert {"t2i_r1", "i2t_r1", "twin_text", "twin_image", "twin_group"} <= set(row)
        assert all(0.0 <= value <= 1.0 for value in row.values())
    assert 0.0 <= results["bridge_fused"]["zeroshot_acc"] <= 1.0
    assert json.loads((tmp_path / "results.json").read_text()) == results
    diagnostics = json.loads((tmp_path / "diagnostics.json").read_text())
    assert {"color", "shape"} == set(diagnostics["vision_tower_prestage"]["probe_held_out"])
    assert len(diagnostics["attention"]) == 2 * 2  # 2 layers x 2 directions
    assert (tmp_path / "diagnostics.png").stat().st_size > 0
    stamps = {
        p: p.stat().st_mtime_ns
        for p in (
            Path(run_demo.prestage_folder(run_demo.DemoArguments(output_dir=str(tmp_path), tower_steps=2)))
            / "prestage.json",
            tmp_path / "cache" / "train" / "bridge_tower_cache.json",
        )
    }
    assert run_demo.main([*argv, "--tower_steps", "2"]) == results  # same seed, same caches: the same numbers
    assert all(p.stat().st_mtime_ns == stamp for p, stamp in stamps.items())
    # A pre-stage tower whose weights changed on disk is refused, not reused (1c168be trusted prestage.json alone)
    weights = next(iter(stamps)).parent / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-8:] = bytes(8)
    weights.write_bytes(bytes(data))
    refused = r"is not as this demo wrote it \(model\.safetensors \(changed\)\): delete the folder, or pass"
    with pytest.raises(ValueError, match=refused):
        run_demo.main([*argv, "--tower_steps", "2"])
