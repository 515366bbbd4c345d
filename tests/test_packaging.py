"""The wheel carries what the package reads at run time: installed without the source tree next to it, it loads the
stage presets and runs the pre-training example.

The wheel goes into a fresh virtual environment in a temporary folder (`fresh_venv`). That environment borrows the
heavy dependencies (torch, transformers, ...) and setuptools from this one through a `.pth` file naming this
environment's site-packages: a plain path entry in a `.pth` file does not process the `.pth` files inside it, so the
editable install's finder (which maps `modeling_bridge` to the checkout) stays inactive, and the temporary
environment's own site-packages comes first on sys.path anyway. pip, run into that environment (`pip_install`), sees
this environment's `modeling-bridge` as installed but leaves it alone ("outside environment"). The test checks that
`modeling_bridge` is imported from the wheel. tests/test_readme.py installs the README's install commands the same
way.
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


def run_checked(command, **kwargs):
    """subprocess.run, asserting success with the command's output tails in the message."""
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, (
        f"{' '.join(map(str, command))} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result


def skip_unless_offline_builds_work():
    """Skip the calling test where this environment cannot build the package without build isolation."""
    if _setuptools_major() < MIN_SETUPTOOLS:
        pytest.skip(
            f"building the package offline (--no-build-isolation) needs setuptools>={MIN_SETUPTOOLS} in this "
            "environment; `pip install -e '.[test]'` installs it"
        )


def copy_package_source(destination: Path) -> Path:
    """What a build reads (pyproject.toml, README.md, LICENSE, the package without bytecode), copied to
    `destination`: a build from the copy leaves no build/ or egg-info folder in the shared checkout."""
    destination.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, destination / name)
    shutil.copytree(
        ROOT / "modeling_bridge",
        destination / "modeling_bridge",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    return destination


def fresh_venv(path: Path) -> Path:
    """A new virtual environment at `path`, without pip, whose site-packages borrows this environment's through a
    `.pth` file (see the module docstring); returns its python."""
    run_checked([sys.executable, "-m", "venv", "--without-pip", str(path)])
    python = path / "bin" / "python"
    venv_site = Path(
        run_checked([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    )
    ours = {sysconfig.get_paths()[key] for key in ("purelib", "platlib")}
    (venv_site / "borrowed_dependencies.pth").write_text("".join(f"{entry}\n" for entry in sorted(ours)))
    return python


def venv_env() -> dict:
    """The environment for commands run in a fresh venv: nothing from PYTHONPATH or the user site, offline."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(HF_HUB_OFFLINE="1", PYTHONNOUSERSITE="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def pip_install(python: Path, *args, cwd=None):
    """This environment's pip installing `args` into `python`'s environment, offline: no index, no dependencies
    (they are borrowed), no build isolation (setuptools is borrowed too)."""
    command = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q"]
    command += ["--no-deps", "--no-index", "--no-build-isolation", *map(str, args)]
    return run_checked(command, cwd=cwd, env=venv_env(), timeout=300)


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory):
    """(python of a fresh venv holding only the wheel, the wheel's path)."""
    skip_unless_offline_builds_work()
    tmp = tmp_path_factory.mktemp("packaging")
    source = copy_package_source(tmp / "source")
    run_checked(
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
    python = fresh_venv(tmp / "venv")
    pip_install(python, wheel)
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
    result = run_checked([python, "-c", script], cwd=work, env=venv_env(), timeout=300)
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
