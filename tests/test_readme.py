"""The README as a newcomer reads it: every Python block runs as written, in order, in one namespace (tiny sizes,
offline) without alarming log output, and the install commands install the package."""

import logging
import os
import re
import shlex
from pathlib import Path

import pytest
from test_packaging import (
    copy_package_source,
    fresh_venv,
    pip_install,
    run_checked,
    skip_unless_offline_builds_work,
    venv_env,
)
from transformers.utils import logging as transformers_logging


ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
INSTALL_MARKER = "<!-- install commands:"  # the HTML comment right above the install block
PLACEHOLDER = "<repository-url>"
IMPORT_CHECK = "import modeling_bridge; print(modeling_bridge.__file__)"  # run outside every source folder


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def install_block(text: str) -> str:
    """The fenced bash block right after the install marker."""
    start = text.index(INSTALL_MARKER)
    match = re.compile(r"\n```bash\n(.*?)^```", flags=re.S | re.M).match(text, text.index("-->", start) + 3)
    assert match, f"README.md: no ```bash block right after {INSTALL_MARKER!r}"
    return match.group(1)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(f"{record.name}: {record.getMessage()}")


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory):
    """Runs the Python blocks once: (their namespace, the folder they ran in, the warnings they logged)."""
    folder = tmp_path_factory.mktemp("readme")
    os.symlink(ROOT / "configuration", folder / "configuration")
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) >= 4  # usage, towers, training, LoRA
    records = _Records()
    loggers = [logging.getLogger(), logging.getLogger("transformers")]  # transformers' own may not propagate
    verbosity = transformers_logging.get_verbosity()
    namespace = {"__name__": "readme"}
    for logger in loggers:
        logger.addHandler(records)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.chdir(folder)
            for number, block in enumerate(blocks, 1):
                exec(compile(block, f"README.md python block {number}", "exec"), namespace)
    finally:
        for logger in loggers:
            logger.removeHandler(records)
    assert transformers_logging.get_verbosity() == verbosity  # a block that quiets transformers restores it
    return namespace, folder, records.messages


def test_readme_python_blocks_run(readme_run):
    namespace, folder, _ = readme_run
    assert (folder / "my-bridge" / "model.safetensors").is_file()
    assert (folder / "my-adapter" / "adapter_config.json").is_file()
    assert namespace["trainer"].state.global_step == 2


def test_readme_python_blocks_log_no_load_report_and_no_invalid_token_ids(readme_run):
    """Loading a class with heads the saved folder lacks (BridgeForPreTraining from a BridgeModel save, a new VQA
    classifier) is expected there and explained; transformers' LOAD REPORT table listing them as MISSING is not
    shown. The GPT-2 configs' special-token ids lie inside their vocabulary (transformers warns otherwise), and the
    vocabulary subset is filled by its corpus."""
    _, _, messages = readme_run
    assert not [m for m in messages if "LOAD REPORT" in m]
    assert not [m for m in messages if "token_id" in m and "within the vocabulary" in m]
    assert not [m for m in messages if "build_vocabulary_subset" in m]


def test_readme_install_commands_install_the_package(tmp_path):
    """The install block, line by line, with `<repository-url>` the file:// URL of a git repository made from a copy
    of the package source: clone + editable install, then the install from the git URL, each into a fresh venv that
    borrows the dependencies (tests/test_packaging.py); offline, so pip gets --no-deps --no-index
    --no-build-isolation. After each install, `import modeling_bridge` comes from what it installed."""
    skip_unless_offline_builds_work()
    text = README.read_text(encoding="utf-8")
    block = install_block(text)
    torch_pin = re.search(r"torch==[0-9][0-9.]*", (ROOT / "Makefile").read_text()).group(0)

    repository = copy_package_source(tmp_path / "repository")
    git = ["git", "-c", "user.name=README test", "-c", "user.email=readme@test.invalid", "-c", "commit.gpgsign=false"]
    run_checked([*git, "init", "-q"], cwd=repository)
    run_checked([*git, "add", "-A"], cwd=repository)
    run_checked([*git, "commit", "-q", "-m", "the package source"], cwd=repository)
    url = f"file://localhost{repository}"  # pip 23's URL check wants a host: git+file:///... is refused there
    work = cwd = tmp_path / "work"
    work.mkdir()

    installed = []  # (the pip command, the venv it installed into, the folder it ran in, where the import came from)
    for line in block.splitlines():
        for command in shell_commands(line.replace(PLACEHOLDER, url)):
            if command[:2] == ["git", "clone"]:
                run_checked(["git", "clone", "-q", *command[2:]], cwd=cwd)
            elif command[0] == "cd" and len(command) == 2:
                cwd = cwd / command[1]
            elif command[:2] == ["pip", "install"]:
                assert torch_pin in command, f"{line!r} does not pin {torch_pin} as the Makefile does"
                python = fresh_venv(tmp_path / f"venv{len(installed)}")
                pip_install(python, *command[2:], cwd=cwd)
                where = run_checked([python, "-c", IMPORT_CHECK], cwd=tmp_path, env=venv_env(), timeout=300)
                installed.append((command, python.parent.parent, cwd, Path(where.stdout.strip()).resolve()))
            else:
                pytest.fail(f"README.md install block: {line!r} runs a command this test does not know")

    assert len(installed) == 2, "the install block: a clone + editable install, then an install from the git URL"
    (from_clone, _, clone, editable), (from_url, venv, _, regular) = installed
    assert "-e" in from_clone
    assert any(re.fullmatch(rf"modeling-bridge(\[[a-z,]+\])? @ git\+{re.escape(url)}", word) for word in from_url)
    extras = pyproject_extras()
    named = {extra for group in re.findall(r"\[([a-z,]+)\]", block) for extra in group.split(",")}
    assert named and named <= extras, f"the install block names extras pyproject.toml lacks: {named - extras}"
    section = text[text.index("## Install and develop") :].split("\n## ")[0]
    assert all(f"`[{extra}]`" in section for extra in extras), "every extra is listed under Install and develop"
    assert clone == work / "modeling-bridge"
    assert editable == (clone / "modeling_bridge" / "__init__.py").resolve()  # the clone's code, editable
    assert regular.is_relative_to(venv.resolve()) and regular.name == "__init__.py"  # a copy inside the venv
    assert not editable.is_relative_to(ROOT) and not regular.is_relative_to(ROOT)


def pyproject_extras() -> set[str]:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])


def shell_commands(line: str) -> list[list[str]]:
    """The commands of one line of a bash block: words split as the shell would, `#` comments dropped, `&&` between
    commands."""
    commands = [[]]
    for word in shlex.split(line, comments=True):
        if word == "&&":
            commands.append([])
        else:
            commands[-1].append(word)
    return [command for command in commands if command]
