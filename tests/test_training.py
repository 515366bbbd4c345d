"""Training utilities: stage presets and block freezing, crash-safe saving, BridgeTrainer logging and resume."""

import dataclasses
import json
import math
import os
from importlib import resources
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import transformers
from transformers import BertTokenizer, Trainer, TrainerCallback, TrainingArguments, ViTImageProcessor

from conftest import IMAGE_SIZE, TEXT_CONFIGS, VISION_CONFIGS, VOCAB, make_config, random_images
from modeling_bridge import BridgeConfig, BridgeForPreTraining, BridgeModel, BridgeProcessor
from modeling_bridge.configuration_bridge import LOSS_WEIGHT_FIELDS
from modeling_bridge.data import BridgeDataCollator
from modeling_bridge.saving import OWNERSHIP_FILE, write_ownership_record
from modeling_bridge.training import (
    BridgeTrainer,
    TrainingStage,
    apply_training_stage,
    load_training_stage,
    save_pretrained_atomically,
    set_tower_trainable_blocks,
    transformer_blocks,
)
from modeling_bridge.training import trainer as trainer_module
from modeling_bridge.training.trainer import PRIVATE_TRAINER_METHODS, STAGING_KIND, check_private_trainer_api


# ---------------------------------------------------------------------------------------------- stages

# Written out by hand per tower type (not derived from the code under test): the block stack, and the parameters
# registered after it (final norms; SigLIP's pooling head also sits there).
BLOCK_PREFIX = {
    "vit": "layers.",
    "clip_vision_model": "encoder.layers.",
    "siglip_vision_model": "encoder.layers.",
    "dinov2": "encoder.layer.",
    "resnet": "encoder.stages.",
    "convnext": "encoder.stages.",
    "bert": "encoder.layer.",
    "roberta": "encoder.layer.",
}
AFTER_BLOCKS = {
    "vit": ("layernorm.",),
    "clip_vision_model": ("post_layernorm.",),
    "siglip_vision_model": ("post_layernorm.", "head."),
    "dinov2": ("layernorm.",),
    "resnet": (),
    "convnext": ("layernorm.",),
    "bert": (),
    "roberta": (),
}
NUM_BLOCKS = 2  # conftest's towers


def _trainable(module, prefix=""):
    return {n for n, p in module.named_parameters(prefix=prefix.rstrip(".")) if p.requires_grad}


def test_stage_presets_load():
    a, b, c = (load_training_stage(name) for name in ("a", "stage_b", "C"))
    assert (a.stage, b.stage, c.stage) == ("a", "b", "c")
    assert (a.vision_trainable_blocks, a.text_trainable_blocks) == (0, 0)
    assert b.vision_trainable_blocks > 0 and b.text_trainable_blocks > 0
    assert (c.vision_trainable_blocks, c.text_trainable_blocks) == (-1, -1)
    for stage in (a, b, c):
        assert set(stage.loss_weights) == {"itc", "itm", "mlm", "mim", "cycle"}
        assert stage.learning_rate > 0
    assert b.loss_weights["mlm"] > 0 and a.loss_weights["mlm"] == 0  # B: the full objective mix
    assert a.learning_rate > c.learning_rate  # C tunes at a lower rate


@pytest.mark.parametrize("text", list(TEXT_CONFIGS))
@pytest.mark.parametrize("vision", list(VISION_CONFIGS))
def test_apply_training_stage_on_every_tower_type(vision, text):
    model = BridgeForPreTraining(make_config(vision, text))
    towers = {"bridge.vision_model.": vision, "bridge.text_model.": text}
    all_names = {n for n, _ in model.named_parameters()}
    tower_names = {n for n in all_names if n.startswith(tuple(towers))}
    bridge_names = all_names - tower_names
    assert bridge_names and tower_names

    model.requires_grad_(False)  # apply_training_stage must turn BRIDGE's own parameters back on
    stage = apply_training_stage(model, "a")
    assert stage.stage == "a"
    # stage A has no MLM / MIM: their heads would get no gradient, so they stay frozen
    unused_heads = {n for n in bridge_names if n.startswith(("mlm_head.", "mim_head."))}
    assert unused_heads and _trainable(model) == bridge_names - unused_heads
    for field in LOSS_WEIGHT_FIELDS:
        assert getattr(model.config, field) == stage.loss_weights[field[: -len("_loss_weight")]]

    stage_b = apply_training_stage(
        model, dataclasses.replace(load_training_stage("b"), vision_trainable_blocks=-1, text_trainable_blocks=-1)
    )
    assert model.config.mlm_loss_weight == stage_b.loss_weights["mlm"] and model.config.mlm_loss_weight > 0
    assert model.bridge.config is model.config  # the forward pass reads these weights

    one = TrainingStage("top1", vision_trainable_blocks=1, text_trainable_blocks=1)
    apply_training_stage(model, one)
    expected = set(bridge_names)
    for tower_prefix, kind in towers.items():
        last_block = f"{tower_prefix}{BLOCK_PREFIX[kind]}{NUM_BLOCKS - 1}."
        after = tuple(tower_prefix + p for p in AFTER_BLOCKS[kind])
        tower_expected = {n for n in tower_names if n.startswith(tower_prefix) and n.startswith((last_block,) + after)}
        assert any(n.startswith(last_block) for n in tower_expected)
        assert all(any(n.startswith(p) for n in tower_expected) for p in after)
        expected |= tower_expected
    assert _trainable(model) == expected

    apply_training_stage(model, TrainingStage("mixed", vision_trainable_blocks=-1, text_trainable_blocks=0))
    assert _trainable(model) == bridge_names | {n for n in tower_names if n.startswith("bridge.vision_model.")}
    apply_training_stage(model, "c")
    assert _trainable(model) == all_names - unused_heads


def test_transformer_blocks_finds_the_stack_and_all_blocks_unfreeze():
    model = BridgeModel(make_config("clip_vision_model", "roberta"))
    name, blocks = transformer_blocks(model.vision_model)
    assert name.endswith("encoder.layers") and len(blocks) == NUM_BLOCKS
    set_tower_trainable_blocks(model.text_model, NUM_BLOCKS)  # k = depth: every block, the embeddings stay frozen
    trainable = _trainable(model.text_model)
    assert trainable and all(n.startswith("encoder.layer.") for n in trainable)
    assert len(trainable) == len([n for n, _ in model.text_model.named_parameters() if n.startswith("encoder.")])
    with pytest.raises(ValueError, match="no stack of repeated blocks"):
        transformer_blocks(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_stage_b_on_a_two_block_model_trains_every_block_with_a_warning():
    """Stage B asks for the top 4 blocks; bridge-tiny's towers have 2: both are clamped to all their blocks."""
    config_path = Path(__file__).resolve().parents[1] / "configuration" / "bridge-tiny.json"
    model = BridgeForPreTraining(BridgeConfig.from_json_file(config_path))
    stage_b = load_training_stage("b")
    assert (stage_b.vision_trainable_blocks, stage_b.text_trainable_blocks) == (4, 4)
    with pytest.warns(UserWarning) as caught:
        apply_training_stage(model, "b")
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 2, messages
    assert messages[0].startswith(
        "Cannot train the top 4 blocks of the text tower (BertModel): it has 2. Training all 2 instead"
    )
    assert messages[1].startswith(
        "Cannot train the top 4 blocks of the vision tower (ViTModel): it has 2. Training all 2 instead"
    )
    for tower, kind in ((model.bridge.vision_model, "vit"), (model.bridge.text_model, "bert")):
        names = [n for n, _ in tower.named_parameters()]
        blocks = {n for n in names if n.startswith(BLOCK_PREFIX[kind])}
        after = {n for n in names if n.startswith(AFTER_BLOCKS[kind])}
        assert {int(n[len(BLOCK_PREFIX[kind]) :].split(".")[0]) for n in blocks} == {0, 1}
        assert _trainable(tower) == blocks | after  # every block and final norm; the embeddings stay frozen
        assert any(n.startswith("embeddings.") for n in names)
    assert model.config.mlm_loss_weight == 0.5 and model.config.cycle_loss_weight == 0.1

    # the same clamping for a stage written by hand, and for a direct call (which names no tower)
    with pytest.warns(UserWarning, match=r"top 3 blocks of the vision tower \(ViTModel\): it has 2"):
        apply_training_stage(model, TrainingStage("deep", vision_trainable_blocks=3))
    with pytest.warns(UserWarning, match=r"top 5 blocks of the BertModel: it has 2"):
        set_tower_trainable_blocks(model.bridge.text_model, 5)
    assert _trainable(model.bridge.text_model) == {
        n for n, _ in model.bridge.text_model.named_parameters() if n.startswith("encoder.layer.")
    }


def test_stage_presets_are_package_data():
    """The presets sit inside the package (so a wheel carries them) and load from there, not from the checkout."""
    presets = resources.files("modeling_bridge.training") / "presets"
    assert sorted(p.name for p in presets.iterdir() if p.name.endswith(".json")) == [
        "stage_a.json",
        "stage_b.json",
        "stage_c.json",
    ]
    for name in ("a", "b", "c"):
        assert load_training_stage(name) == TrainingStage(**json.loads((presets / f"stage_{name}.json").read_text()))
    assert not (Path(__file__).resolve().parents[1] / "configuration" / "stage_a.json").exists()


def test_bad_stages_give_clear_errors(tmp_path):
    model = BridgeModel(make_config())
    with pytest.raises(FileNotFoundError, match=r"No training stage 'stage_d'.*\('a', 'b', 'c'\)"):
        load_training_stage("stage_d")
    with pytest.raises(ValueError, match=r"vision_trainable_blocks=-2 must be -1"):
        TrainingStage("x", vision_trainable_blocks=-2)
    with pytest.raises(ValueError, match=r"text_trainable_blocks=1.5"):
        TrainingStage("x", text_trainable_blocks=1.5)
    with pytest.raises(ValueError, match=r"unknown loss weights \['contrastive'\]"):
        TrainingStage("x", loss_weights={"contrastive": 1.0})
    with pytest.raises(ValueError, match=r"loss weight itm=-1.0 must be a number >= 0"):
        TrainingStage("x", loss_weights={"itm": -1.0})

    unknown_key = tmp_path / "unknown.json"
    unknown_key.write_text(json.dumps({"stage": "x", "lr": 1e-4}))
    with pytest.raises(ValueError, match=r"unknown.json.*'lr'.*Known keys"):
        load_training_stage(unknown_key)
    not_json = tmp_path / "broken.json"
    not_json.write_text('{"stage": "x", ')
    with pytest.raises(ValueError, match=r"broken.json.*not valid JSON"):
        load_training_stage(not_json)
    not_an_object = tmp_path / "list.json"
    not_an_object.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"list.json"):
        load_training_stage(not_an_object)
    good = tmp_path / "mine.json"
    good.write_text(json.dumps({"stage": "mine", "vision_trainable_blocks": 1, "loss_weights": {"itm": 2.0}}))
    apply_training_stage(model, str(good))
    assert model.config.itm_loss_weight == 2.0
    assert _trainable(model.vision_model) and not _trainable(model.text_model)


# ---------------------------------------------------------------------------------------------- atomic saving


class _Writes:
    def __init__(self, name, content, fail=False):
        self.name, self.content, self.fail = name, content, fail

    def save_pretrained(self, directory):
        with open(os.path.join(directory, self.name), "w") as f:
            f.write(self.content)
        if self.fail:
            raise RuntimeError("disk full")


def test_save_pretrained_atomically_keeps_the_old_copy_when_a_save_fails(tmp_path):
    out = tmp_path / "model"
    save_pretrained_atomically(str(out), _Writes("config.json", "v1"), _Writes("model.safetensors", "w1"))
    assert sorted(os.listdir(out)) == [OWNERSHIP_FILE, "config.json", "model.safetensors"]

    with pytest.raises(RuntimeError, match="disk full"):  # the second object fails after writing its file
        save_pretrained_atomically(
            str(out), _Writes("config.json", "v2"), _Writes("model.safetensors", "w2", fail=True)
        )
    assert sorted(os.listdir(out)) == [OWNERSHIP_FILE, "config.json", "model.safetensors"]
    assert (out / "config.json").read_text() == "v1" and (out / "model.safetensors").read_text() == "w1"
    assert sorted(os.listdir(tmp_path)) == ["model"]  # no staging folder left behind

    save_pretrained_atomically(str(out), _Writes("config.json", "v3"))
    assert sorted(os.listdir(out)) == [OWNERSHIP_FILE, "config.json"]  # replaced, not merged
    assert (out / "config.json").read_text() == "v3"
    assert sorted(os.listdir(tmp_path)) == ["model"]

    with pytest.raises(KeyboardInterrupt):  # an interrupt, too, leaves the previous copy and no staging folder
        save_pretrained_atomically(str(out), _Interrupts())
    assert sorted(os.listdir(out)) == [OWNERSHIP_FILE, "config.json"] and sorted(os.listdir(tmp_path)) == ["model"]

    fresh = tmp_path / "new" / "deeper"
    with pytest.raises(RuntimeError):  # nothing existed: nothing half-written appears
        save_pretrained_atomically(str(fresh), _Writes("model.safetensors", "x", fail=True))
    assert not fresh.exists()


class _Interrupts:
    def save_pretrained(self, directory):
        open(os.path.join(directory, "partial"), "w").close()
        raise KeyboardInterrupt


# ---------------------------------------------------------------------------------------------- Trainer

MAX_STEPS, SAVE_STEPS, BATCH = 6, 3, 4
WEIGHTS = dict(
    itc_loss_weight=1.0, itm_loss_weight=1.0, mlm_loss_weight=0.5, mim_loss_weight=0.5, cycle_loss_weight=0.1
)


def _dataset(n=16):
    rng = np.random.default_rng(0)
    words = VOCAB[5:]
    captions = [" ".join(rng.choice(words, size=rng.integers(2, 7))) for _ in range(n)]
    return datasets.Dataset.from_dict({"image": random_images(n, seed=3), "caption": captions})


class _CountSteps(TrainerCallback):
    def __init__(self):
        self.steps = []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


class _Crash(TrainerCallback):
    def __init__(self, step=SAVE_STEPS + 1):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise RuntimeError("killed")


def _processor():
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)})
    image_processor = ViTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return BridgeProcessor(image_processor=image_processor, tokenizer=tokenizer)


def _train(output_dir, resume=False, callbacks=(), logging_steps=1, num_rows=16, eval_rows=0, **arguments):
    """Train the test model from its seed-0 initialisation; `arguments` override TrainingArguments."""
    torch.manual_seed(0)
    model = BridgeForPreTraining(make_config(**WEIGHTS))  # dropouts on: their randomness must be restored too
    args = TrainingArguments(
        **{
            "output_dir": str(output_dir),
            "max_steps": MAX_STEPS,
            "save_steps": SAVE_STEPS,
            "per_device_train_batch_size": BATCH,
            "learning_rate": 1e-3,
            "logging_steps": logging_steps,
            "remove_unused_columns": False,
            "report_to": [],
            "seed": 0,
            "dataloader_num_workers": 0,
            "use_cpu": True,
            "disable_tqdm": True,
            "save_only_model": False,
            **arguments,
        }
    )
    collator = BridgeDataCollator(_processor(), mlm_probability=0.3, mim_probability=0.25, num_patches=16)
    trainer = BridgeTrainer(
        model=model,
        args=args,
        train_dataset=_dataset(num_rows),
        data_collator=collator,
        eval_dataset=_dataset(eval_rows) if eval_rows else None,
        callbacks=list(callbacks),
    )
    trainer.train(resume_from_checkpoint=resume or None)
    return trainer


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("uninterrupted")
    return output_dir, _train(output_dir)


def test_component_losses_are_logged_and_add_up_to_the_loss(uninterrupted):
    output_dir, trainer = uninterrupted
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["step"] for entry in logs] == list(range(1, MAX_STEPS + 1))
    for entry in logs:
        for name in (
            "itc_loss",
            "unimodal_itc_loss",
            "cross_itc_loss",
            "itm_loss",
            "mlm_loss",
            "mim_loss",
            "cycle_loss",
        ):
            assert name in entry and np.isfinite(entry[name]), name
        # the step's components combine into its loss: each log holds this window's values, not running means
        combined = sum(entry[f"{k[: -len('_loss_weight')]}_loss"] * w for k, w in WEIGHTS.items())
        assert entry["loss"] == pytest.approx(combined, abs=2e-4)
    assert sorted(os.listdir(output_dir)) == ["checkpoint-3", "checkpoint-6"]  # no staging folder left


def test_killed_run_resumes_to_the_same_weights(tmp_path, uninterrupted):
    _, reference = uninterrupted
    expected = {n: p.detach().clone() for n, p in reference.model.named_parameters()}

    out = tmp_path / "b"
    with pytest.raises(RuntimeError, match="killed"):
        _train(out, callbacks=[_Crash()])
    assert sorted(os.listdir(out)) == ["checkpoint-3"]
    # a save interrupted later: a staging folder with a newer step and partial files, which resume must ignore
    staging = out / ".staging-checkpoint-4" / "checkpoint-4"
    staging.mkdir(parents=True)
    (staging / "model.safetensors").write_bytes(b"partial")

    counter = _CountSteps()
    resumed = _train(out, resume=True, callbacks=[counter])
    assert counter.steps == list(range(SAVE_STEPS + 1, MAX_STEPS + 1))  # it went on from checkpoint-3
    assert resumed.state.global_step == MAX_STEPS

    def logged(trainer):
        return {e["step"]: e["loss"] for e in trainer.state.log_history if "loss" in e}

    assert logged(resumed) == pytest.approx(logged(reference), abs=1e-4)  # same batches, same masks, same losses
    assert {"checkpoint-3", "checkpoint-6"} <= set(os.listdir(out))
    for name, param in resumed.model.named_parameters():
        torch.testing.assert_close(
            param.detach(), expected[name], atol=1e-6, rtol=0, msg=lambda m, name=name: f"{name}: {m}"
        )
    torch.manual_seed(0)
    initial = BridgeForPreTraining(make_config(**WEIGHTS)).state_dict()
    # training moved the weights (vision blocks included): the comparison is not between two initialisations
    assert not torch.equal(
        initial["bridge.vision_model.layers.1.mlp.fc1.weight"], expected["bridge.vision_model.layers.1.mlp.fc1.weight"]
    )
    assert sum(not torch.equal(initial[n], expected[n]) for n in expected) > 0.9 * len(expected)


def test_killed_run_with_gradient_accumulation_resumes_to_the_same_losses(tmp_path):
    """5 batches per epoch in steps of 2 + 2 + 1: the collator seeds follow Trainer's skipping across an uneven epoch
    (resumed at step 2 of 3, then the next epoch)."""
    run = dict(num_rows=5 * BATCH, gradient_accumulation_steps=2, max_steps=5, save_steps=2)
    reference = _train(tmp_path / "reference", **run)
    with pytest.raises(RuntimeError, match="killed"):
        _train(tmp_path / "killed", callbacks=[_Crash(step=3)], **run)
    counter = _CountSteps()
    resumed = _train(tmp_path / "killed", resume=True, callbacks=[counter], **run)
    assert counter.steps == [3, 4, 5]

    def logged(trainer):
        return {e["step"]: e["loss"] for e in trainer.state.log_history if "loss" in e}

    assert sorted(logged(resumed)) == [1, 2, 3, 4, 5]  # 1 and 2 from the checkpoint's log history
    assert logged(resumed) == pytest.approx(logged(reference), abs=1e-4)
    for (name, param), expected in zip(resumed.model.named_parameters(), reference.model.parameters()):
        torch.testing.assert_close(
            param.detach(), expected.detach(), atol=1e-6, rtol=0, msg=lambda m, name=name: f"{name}: {m}"
        )


class _Stop(Exception):
    pass


class _CaptureWeightsAndStop(TrainerCallback):
    """The weights training starts from (after the checkpoint was loaded), then stops the run."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.weights = {n: t.detach().clone() for n, t in model.state_dict().items()}
        raise _Stop


@pytest.mark.parametrize("workaround", [True, False], ids=["workaround", "trainer_loading"])
def test_resume_restores_the_vision_blocks_only_with_the_workaround(uninterrupted, tmp_path, monkeypatch, workaround):
    """transformers #43701: Trainer's own resume loading leaves the ViT blocks at their initial weights, since
    save_pretrained wrote them under legacy names; BridgeTrainer then loads through from_pretrained's mapping."""
    checkpoint = uninterrupted[0] / "checkpoint-3"
    expected = BridgeForPreTraining.from_pretrained(checkpoint).state_dict()
    torch.manual_seed(0)
    initial = BridgeForPreTraining(make_config(**WEIGHTS)).state_dict()
    vision_blocks = {n for n in expected if n.startswith("bridge.vision_model.layers.")}
    assert vision_blocks and all(not torch.equal(initial[n], expected[n]) for n in vision_blocks)  # all trained

    monkeypatch.setattr(trainer_module, "_TRAINER_RESTORES_VIT", None)  # probe again, as a new process would
    probe = BridgeTrainer(
        model=BridgeForPreTraining(make_config()),
        args=TrainingArguments(output_dir=str(tmp_path / "probe"), use_cpu=True, report_to=[]),
    )
    trainer_restores = trainer_module.trainer_restores_vit_weights(probe)
    if not workaround:  # what BridgeTrainer does when the probe says Trainer's loading is fine
        monkeypatch.setattr(trainer_module, "trainer_restores_vit_weights", lambda trainer: True)
    capture = _CaptureWeightsAndStop()
    with pytest.raises(_Stop):
        _train(tmp_path / "run", resume=str(checkpoint), callbacks=[capture])

    lost = {n for n, value in capture.weights.items() if not torch.equal(value, expected[n])}
    if workaround:
        assert lost == set()
        return
    assert trainer_restores == (lost == set())  # the probe tells whether Trainer's own loading is enough
    if tuple(int(part) for part in transformers.__version__.split(".")[:2]) <= (5, 24):
        assert lost, f"transformers {transformers.__version__} is known to have #43701"
    if lost:
        assert lost == vision_blocks
        assert all(torch.equal(capture.weights[n], initial[n]) for n in lost)  # silently left at their init


class _FirstEvaluationIsBest(TrainerCallback):
    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        metrics["eval_order"] = state.global_step  # metric_for_best_model="order", lower is better


def test_best_checkpoint_is_loaded_at_the_end_with_its_vision_blocks(tmp_path):
    """load_best_model_at_end goes through the same workaround, and the best checkpoint is the renamed folder; a
    staging folder left by a save killed at the same step is not merged into the new checkpoint."""
    stale = tmp_path / ".staging-checkpoint-2" / "checkpoint-2"
    (tmp_path / ".staging-checkpoint-2").mkdir()
    write_ownership_record(stale.parent, STAGING_KIND)  # as BridgeTrainer makes it, before Trainer writes into it
    stale.mkdir()
    (stale / "stale.bin").write_bytes(b"from a killed save")
    trainer = _train(
        tmp_path,
        callbacks=[_FirstEvaluationIsBest()],
        max_steps=4,
        save_steps=2,
        eval_rows=4,
        eval_strategy="steps",
        eval_steps=2,
        load_best_model_at_end=True,
        metric_for_best_model="order",
        greater_is_better=False,
    )
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-2", "checkpoint-4"]
    assert "stale.bin" not in os.listdir(tmp_path / "checkpoint-2")
    assert trainer.state.best_model_checkpoint == str(tmp_path / "checkpoint-2")

    best = BridgeForPreTraining.from_pretrained(tmp_path / "checkpoint-2").state_dict()
    last = BridgeForPreTraining.from_pretrained(tmp_path / "checkpoint-4").state_dict()
    name = "bridge.vision_model.layers.1.attention.q_proj.weight"
    assert not torch.equal(best[name], last[name])
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, best[key]), key


def test_private_trainer_methods_match_this_transformers():
    """BridgeTrainer overrides these private Trainer methods; the installed transformers must define them as it
    expects (`BridgeTrainer()` runs the same check)."""
    check_private_trainer_api()
    for name in PRIVATE_TRAINER_METHODS:
        assert name in vars(Trainer), name


def test_changed_private_trainer_methods_fail_loudly(tmp_path, monkeypatch):
    class Changed(Trainer):
        def _save_checkpoint(self, model, trial, metrics=None):
            pass

    Changed._load_best_model = None  # gone
    with pytest.raises(RuntimeError) as caught:
        check_private_trainer_api(Changed)
    message = str(caught.value)
    assert "_save_checkpoint(model, trial, metrics) instead of _save_checkpoint(model, trial)" in message
    assert "_load_best_model is gone" in message
    assert "_load_from_checkpoint" not in message and "_get_output_dir" not in message

    monkeypatch.setattr(Trainer, "_load_from_checkpoint", lambda self, checkpoint: None)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    with pytest.raises(
        RuntimeError,
        match=r"_load_from_checkpoint\(checkpoint\) instead of "
        r"_load_from_checkpoint\(resume_from_checkpoint, model\)",
    ):
        BridgeTrainer(model=BridgeForPreTraining(make_config()), args=args)


def test_evaluation_reports_eval_loss_with_mlm_off(tmp_path):
    """Trainer would take forward's `mlm_labels` argument for the label column and, with MLM off, report no
    eval_loss; BridgeTrainer declares that the model has no label columns."""
    torch.manual_seed(0)
    model = BridgeForPreTraining(make_config())
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_eval_batch_size=4,
        remove_unused_columns=False,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = BridgeTrainer(
        model=model, args=args, eval_dataset=_dataset(8), data_collator=BridgeDataCollator(_processor())
    )
    metrics = trainer.evaluate()
    assert math.isfinite(metrics["eval_loss"]) and metrics["eval_loss"] > 0


def test_apply_training_stage_leaves_a_lora_model_to_its_adapter():
    from modeling_bridge.training import find_bridge_model, make_lora_model

    model = make_lora_model(BridgeForPreTraining(make_config()))
    # found by its own child modules: the PeftModel forwards attribute lookups but is not the BridgeModel
    assert find_bridge_model(model) is model.get_base_model().bridge
    before = _trainable(model)
    stage = apply_training_stage(model, "b")
    assert _trainable(model) == before and all("lora_" in n or "modules_to_save" in n for n in before)
    assert model.config.mlm_loss_weight == stage.loss_weights["mlm"]


def test_learned_scalars_get_no_weight_decay(tmp_path):
    model = BridgeForPreTraining(make_config())
    args = TrainingArguments(output_dir=str(tmp_path), weight_decay=0.05, report_to="none", use_cpu=True)
    trainer = BridgeTrainer(model=model, args=args)
    decayed = set(trainer.get_decay_parameter_names(model))
    scalars = {n for n in dict(model.named_parameters()) if n.endswith(".value")}
    assert "itc_alpha.value" in scalars and "bridge.interaction_layers.1.text_attention.temperature.value" in scalars
    assert len(scalars) == 2 + 4 * model.config.num_interaction_layers  # logit_scale, itc_alpha; 4 per layer
    assert not scalars & decayed
    assert "bridge.interaction_layers.0.text_attention.q_proj.weight" in decayed  # matrices still decay
    optimizer = trainer.create_optimizer()
    by_param = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    parameters = dict(model.named_parameters())
    assert {by_param[id(parameters[n])] for n in scalars} == {0.0}
    assert by_param[id(parameters["bridge.vision_cross_projection.weight"])] == 0.05
