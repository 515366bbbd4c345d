"""The pre-training example end to end on a tiny model: trains, saves atomically, resumes, evaluates."""

import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_config
from transformers import AutoModel

from modeling_bridge import BridgeModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import run_pretraining  # noqa: E402


@pytest.fixture
def tiny_source(tmp_path, processor):
    make_config().to_json_file(tmp_path / "bridge.json")
    stage_b = json.loads((Path(run_pretraining.__file__).parents[1] / "configuration" / "stage_b.json").read_text())
    stage_b.update(vision_trainable_blocks=1, text_trainable_blocks=1)  # the tiny towers have 2 blocks
    (tmp_path / "stage_b_tiny.json").write_text(json.dumps(stage_b))
    processor.save_pretrained(tmp_path / "processor")
    return tmp_path


def _args(source, output_dir, *extra):
    return ["--config_name", str(source / "bridge.json"), "--processor_name_or_path", str(source / "processor"),
            "--dataset", "bridge-shapes", "--num_shapes_train", "16", "--output_dir", str(output_dir),
            "--per_device_train_batch_size", "4", "--report_to", "none", "--use_cpu", "true",
            "--disable_tqdm", "true", "--seed", "0", *extra]


def test_stage_b_run_saves_a_model_that_auto_loads_and_reports_every_component(tiny_source, tmp_path):
    out = tmp_path / "run"
    trainer = run_pretraining.main(_args(tiny_source, out, "--stage", str(tiny_source / "stage_b_tiny.json"), "--max_steps", "2", "--logging_steps",
                                         "1", "--eval_split", "test", "--max_eval_samples", "8"))
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert {"itc_loss", "itm_loss", "mlm_loss", "mim_loss", "cycle_loss"} <= set(logged[-1])
    evaluated = [entry for entry in trainer.state.log_history if "eval_loss" in entry]
    assert evaluated and math.isfinite(evaluated[-1]["eval_loss"])
    assert trainer.args.learning_rate == 5e-5 and trainer.args.weight_decay == 0.05  # stage b's recipe
    model = AutoModel.from_pretrained(out / "model")
    assert type(model) is BridgeModel and model.config.mlm_loss_weight == 0.5  # stage b's weights were saved
    trained = trainer.model.bridge.state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, trained[name]), name
    assert not [p for p in os.listdir(tmp_path / "run") if p.startswith(".")]  # no staging folder left


def test_resume_from_checkpoint_continues_the_run(tiny_source, tmp_path):
    out = tmp_path / "run"
    run_pretraining.main(_args(tiny_source, out, "--max_steps", "2", "--save_steps", "2"))
    trainer = run_pretraining.main(_args(tiny_source, out, "--max_steps", "4", "--save_steps", "2",
                                         "--resume_from_checkpoint", "True", "--learning_rate", "3e-4"))
    assert trainer.state.global_step == 4
    assert trainer.args.learning_rate == 3e-4  # a command-line value wins over the stage's
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4


def test_bad_model_arguments_stop_with_one_line(tiny_source, tmp_path):
    with pytest.raises(SystemExit, match="exactly one of"):
        run_pretraining.main(_args(tiny_source, tmp_path, "--model_name_or_path", str(tmp_path)))
    with pytest.raises(SystemExit, match="--vision_model and --text_model go together"):
        run_pretraining.main(["--vision_model", "x", "--output_dir", str(tmp_path)])
