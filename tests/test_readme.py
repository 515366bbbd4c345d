"""Every Python block of the README runs as written, in order, in one namespace (tiny sizes, offline)."""

import os
import re
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    blocks = python_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    assert len(blocks) >= 4  # usage, towers, training, LoRA
    os.symlink(ROOT / "configuration", tmp_path / "configuration")
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "readme"}
    for number, block in enumerate(blocks, 1):
        exec(compile(block, f"README.md python block {number}", "exec"), namespace)
    assert (tmp_path / "my-bridge" / "model.safetensors").is_file()
    assert (tmp_path / "my-adapter" / "adapter_config.json").is_file()
    assert namespace["trainer"].state.global_step == 2
