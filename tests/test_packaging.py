"""The wheel carries what the package reads at run time: installed without the source tree next to it, it loads the
stage presets and runs the pre-training example.

The wheel goes into a fresh virtual environment in a temporary folder. That environment borrows the heavy
dependencies (torch, transformers, ...) from this one through a `.pth` file naming this environment's site-packages:
a plain path entry in a `.pth` file does not process the `.pth` files inside it, so the editable install's finder
(which maps `modeling_bridge` to the checkout) stays inactive, and the temporary environment's own site-packages comes
first on sys.path anyway. The test checks that `modeling_bridge` is imported from the wheel.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from conftest import make_config


ROOT = Path(__file__).resolve().parents[1]
PRESETS = ("stage_a.json", "stage_b.json", "stage_c.json")
MIN_SETUPTOOLS = 77  # `license = "Apache-2.0"` (a PEP 639 expression) in pyproject.toml


def _setuptools_major() -> int:
    if importlib.util.find_spec("setuptools") is None:
        return 0
    from importlib.metadata import version

    return int(version("setuptools").split(".")[0])


def _run(command, **kwargs):
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, (
        f"{' '.join(map(str, command))} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory):
    """(python of a fresh venv holding only the wheel, the wheel's path)."""
    if _setuptools_major() < MIN_SETUPTOOLS:
        pytest.skip(
            f"building the wheel offline (--no-build-isolation) needs setuptools>={MIN_SETUPTOOLS} in this "
            "environment; `pip install -e '.[test]'` installs it"
        )
    tmp = tmp_path_factory.mktemp("packaging")
    # Build from a copy, so that the build leaves no build/ or egg-info folder in the shared checkout.
    source = tmp / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "modeling_bridge", source / "modeling_bridge", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(source),
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "-w",
            str(tmp / "dist"),
        ]
    )
    (wheel,) = (tmp / "dist").glob("modeling_bridge-*.whl")

    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    _run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)]
    )
    venv_site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    ours = {sysconfig.get_paths()[key] for key in ("purelib", "platlib")}
    (venv_site / "borrowed_dependencies.pth").write_text("".join(f"{path}\n" for path in sorted(ours)))
    return python, wheel


def test_wheel_ships_the_stage_presets(installed_wheel):
    _, wheel = installed_wheel
    names = zipfile.ZipFile(wheel).namelist()
    assert sorted(n for n in names if "/presets/" in n) == [f"modeling_bridge/training/presets/{p}" for p in PRESETS]


def test_installed_wheel_loads_presets_and_runs_the_pretraining_example(installed_wheel, tmp_path, processor):
    python, _ = installed_wheel
    # MLM, MIM and cycle on in the config: stage A must turn them off
    weights = dict(mlm_loss_weight=0.5, mim_loss_weight=0.5, cycle_loss_weight=0.1)
    make_config(**weights).to_json_file(tmp_path / "bridge.json")
    processor.save_pretrained(tmp_path / "processor")
    work = tmp_path / "cwd"  # neither the checkout nor the venv: nothing relative to the current folder helps
    work.mkdir()
    args = [
        "--stage",
        "a",
        "--config_name",
        str(tmp_path / "bridge.json"),
        "--processor_name_or_path",
        str(tmp_path / "processor"),
        "--dataset",
        "bridge-shapes",
        "--max_train_samples",
        "8",
        "--output_dir",
        str(tmp_path / "run"),
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
        "--seed",
        "0",
    ]
    # One interpreter for both checks: importing torch and transformers dominates the time.
    script = f"""
import dataclasses, json, runpy, sys
import modeling_bridge
from modeling_bridge.training import load_training_stage
print("RESULT " + json.dumps({{"file": modeling_bridge.__file__,
                              "stages": [dataclasses.asdict(load_training_stage(n)) for n in ("a", "stage_b", "C")]}}))
sys.argv = ["run_pretraining.py", *{args!r}]
try:
    runpy.run_path({str(ROOT / "examples" / "run_pretraining.py")!r}, run_name="__main__")
except SystemExit as exit:
    if exit.code not in (None, 0):
        raise
"""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(HF_HUB_OFFLINE="1", PYTHONNOUSERSITE="1")
    result = _run([python, "-c", script], cwd=work, env=env, timeout=300)
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    found = json.loads(line[len("RESULT ") :])

    venv = python.parent.parent
    assert Path(found["file"]).resolve().is_relative_to(venv.resolve()), found["file"]  # the wheel, not the checkout
    presets = ROOT / "modeling_bridge" / "training" / "presets"
    assert found["stages"] == [json.loads((presets / p).read_text()) for p in PRESETS]

    saved = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    stage_a = found["stages"][0]["loss_weights"]
    assert all(stage_a[name[: -len("_loss_weight")]] == 0 for name in weights)
    assert {name: saved[f"{name}_loss_weight"] for name in stage_a} == stage_a  # the preset was applied
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
