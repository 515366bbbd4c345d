"""Saving never deletes what the user owns, and saved folders get the usual permissions."""

import argparse
import json
import os
import shutil
import stat
import threading

import numpy as np
import pytest
import torch
from datasets import Dataset
from PIL import Image
from transformers import TrainingArguments

from conftest import make_config, make_model
from modeling_bridge import BridgeForPreTraining, BridgeModel
from modeling_bridge.data import BridgeDataCollator
from modeling_bridge.hub_utils import publish, save_hub_folder
from modeling_bridge.saving import (
    OWNERSHIP_FILE,
    check_output_dir,
    foreign_entries,
    package_wrote,
    save_pretrained_atomically,
)
from modeling_bridge.training import BridgeTrainer


class _Writes:
    """Writes one file in save_pretrained, then optionally fails (a disk-full stand-in)."""

    def __init__(self, name, content, fail=False):
        self.name, self.content, self.fail = name, content, fail

    def save_pretrained(self, directory):
        with open(os.path.join(directory, self.name), "w") as f:
            f.write(self.content)
        if self.fail:
            raise RuntimeError("disk full")


class _Interrupts:
    def save_pretrained(self, directory):
        open(os.path.join(directory, "partial"), "w").close()
        raise KeyboardInterrupt


def _snapshot(folder):
    """Every file under `folder` with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _user_folder(path):
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("my notes")
    (path / "data").mkdir()
    (path / "data" / "rows.csv").write_text("1,2\n")
    return _snapshot(path)


@pytest.fixture
def umask():
    """Run with a known umask (restored after), so the expected permissions differ from mkdtemp's 0o700."""
    previous = os.umask(0o027)
    yield 0o027
    os.umask(previous)


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


# ---------------------------------------------------------------------------------------------- what may be replaced


def test_a_previous_save_is_replaced_and_a_failed_save_keeps_it(tmp_path, processor):
    out = tmp_path / "model"
    save_pretrained_atomically(out, make_model(seed=0), processor)
    first = _snapshot(out)
    assert foreign_entries(out) == []  # everything save_pretrained wrote is recognised
    save_pretrained_atomically(out, make_model(seed=1), processor)
    second = _snapshot(out)
    assert set(second) == set(first) and second["model.safetensors"] != first["model.safetensors"]
    assert sorted(os.listdir(tmp_path)) == ["model"]

    with pytest.raises(RuntimeError, match="disk full"):  # the second object fails after writing its file
        save_pretrained_atomically(out, _Writes("config.json", "v2"), _Writes("model.safetensors", "w", fail=True))
    assert _snapshot(out) == second and sorted(os.listdir(tmp_path)) == ["model"]
    with pytest.raises(KeyboardInterrupt):
        save_pretrained_atomically(out, _Interrupts())
    assert _snapshot(out) == second and sorted(os.listdir(tmp_path)) == ["model"]

    save_pretrained_atomically(out, _Writes("config.json", "v3"))
    assert sorted(os.listdir(out)) == [OWNERSHIP_FILE, "config.json"]  # replaced, not merged
    fresh = tmp_path / "new" / "deeper"
    with pytest.raises(RuntimeError):  # nothing existed: nothing half-written appears
        save_pretrained_atomically(fresh, _Writes("model.safetensors", "x", fail=True))
    assert not fresh.exists()


REFUSED = (
    "{out} holds files that this package did not write, or that changed since it wrote them ({shown}), so it is not "
    "replaced; pass overwrite=True (--overwrite on the command line) to replace it, or choose another output folder."
)


def test_file_names_prove_nothing_a_users_folder_of_save_like_names_is_kept(tmp_path, processor):
    """A folder holding only names a save writes (config.json, README.md, vocab.txt, *.model, modeling_*.py) but
    not written by the package is the user's: refused without overwrite, bytes untouched (1c168be deleted it)."""
    out = tmp_path / "mine"
    out.mkdir()
    for name in ("config.json", "README.md", "vocab.txt", "notes.model", "modeling_mine.py"):
        (out / name).write_text(f"my {name}")
    before = _snapshot(out)
    shown = "'README.md', 'config.json', 'modeling_mine.py', 'notes.model', 'vocab.txt'"
    with pytest.raises(FileExistsError) as error:
        save_pretrained_atomically(out, make_model(), processor)
    assert str(error.value) == REFUSED.format(out=out, shown=shown)
    assert _snapshot(out) == before and sorted(os.listdir(tmp_path)) == ["mine"]
    # A plain save_pretrained (or one by a version of the package before the ownership record) is not provably ours
    plain = tmp_path / "plain"
    make_model().save_pretrained(plain)
    assert "config.json" in foreign_entries(plain) and not package_wrote(plain)
    with pytest.raises(FileExistsError, match="holds files that this package did not write"):
        save_pretrained_atomically(plain, make_model())
    save_pretrained_atomically(plain, make_model(seed=3), overwrite=True)  # the user said so
    assert package_wrote(plain)


def test_a_sharded_hub_folder_and_a_save_with_a_processor_are_the_packages(tmp_path, processor):
    hub = save_hub_folder(make_model(), processor, tmp_path / "hub", max_shard_size="60KB")
    assert any(name.startswith("model-00001-of-") for name in os.listdir(hub))
    assert foreign_entries(hub) == [] and package_wrote(hub)
    record = json.loads((hub / OWNERSHIP_FILE).read_text())
    assert set(record["files"]) == set(os.listdir(hub)) - {OWNERSHIP_FILE}
    assert record["files"]["README.md"][0] == (hub / "README.md").stat().st_size


def test_a_save_changed_after_writing_or_with_a_copied_record_is_not_the_packages(tmp_path, processor):
    out = tmp_path / "model"
    save_pretrained_atomically(out, make_model(), processor)
    (out / "config.json").write_text('{"edited": "by the user, same name"}')
    with pytest.raises(FileExistsError) as error:
        save_pretrained_atomically(out, make_model(seed=1))
    assert str(error.value) == REFUSED.format(out=out, shown="'config.json (changed)'")
    assert (out / "config.json").read_text() == '{"edited": "by the user, same name"}'

    # A record copied into a user's folder proves nothing about the files it does not list
    mine = tmp_path / "mine"
    shutil.copytree(out, mine)  # copy2 keeps sizes and modification times: those files are still as written
    (mine / "results.csv").write_text("1,2")
    (mine / "runs").mkdir()
    assert foreign_entries(mine) == ["config.json (changed)", "results.csv", "runs/"]
    # A damaged record (not JSON, or another writer's) proves nothing either
    again = tmp_path / "again"
    save_pretrained_atomically(again, _Writes("config.json", "{}"))
    (again / OWNERSHIP_FILE).write_text("{not json")
    assert foreign_entries(again) == ["config.json"]
    (again / OWNERSHIP_FILE).write_text(json.dumps({"written_by": "someone else", "files": {}}))
    assert foreign_entries(again) == ["config.json"]


def test_concurrent_saves_into_one_folder_all_succeed_and_it_always_loads(tmp_path, processor):
    """Eight threads save one model and processor into one folder at once (1c168be: KeyError 'auto_map' inside
    ProcessorMixin, and renames racing each other, leaving `.old-` folders behind)."""
    model, out, errors = make_model(), tmp_path / "model", []

    def save():
        try:
            save_pretrained_atomically(out, model, processor)
        except Exception as error:  # collected: an exception in a thread would not fail the test
            errors.append(error)

    threads = [threading.Thread(target=save) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert os.listdir(tmp_path) == ["model"] and package_wrote(out)
    reloaded = BridgeModel.from_pretrained(out)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reloaded.state_dict().values()))


def test_an_empty_folder_is_used(tmp_path):
    (tmp_path / "empty").mkdir()
    save_pretrained_atomically(tmp_path / "empty", _Writes("config.json", "{}"))
    assert sorted(os.listdir(tmp_path / "empty")) == [OWNERSHIP_FILE, "config.json"]


@pytest.mark.parametrize(
    "extra, shown",
    [("notes.txt", "'notes.txt'"), ("runs/", "'runs/'"), (".git/", "'.git/'"), (".hidden", "'.hidden'")],
)
def test_a_folder_holding_anything_else_is_refused_unless_overwrite(tmp_path, extra, shown):
    out = tmp_path / "model"
    save_pretrained_atomically(out, _Writes("config.json", "old"))  # a previous save, then the user adds to it
    (out / extra.rstrip("/")).mkdir() if extra.endswith("/") else (out / extra).write_text("mine")
    before = _snapshot(out)
    with pytest.raises(FileExistsError) as error:
        save_pretrained_atomically(out, _Writes("config.json", "new"))
    assert str(error.value) == REFUSED.format(out=out, shown=shown)
    assert _snapshot(out) == before and sorted(os.listdir(tmp_path)) == ["model"]

    save_pretrained_atomically(out, _Writes("config.json", "new"), overwrite=True)
    assert sorted(os.listdir(out)) == [OWNERSHIP_FILE, "config.json"] and (out / "config.json").read_text() == "new"


def test_a_file_or_a_link_is_never_replaced(tmp_path):
    target = tmp_path / "model"
    target.write_text("precious")
    for overwrite in (False, True):
        with pytest.raises(
            FileExistsError,
            match=r"model exists and is a file, not a folder; it is not replaced\. "
            r"Remove it or choose another output folder\.",
        ):
            save_pretrained_atomically(target, _Writes("config.json", "{}"), overwrite=overwrite)
    assert target.read_text() == "precious"

    real = tmp_path / "real"
    real.mkdir()
    (real / "config.json").write_text("kept")
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(FileExistsError, match="link is a symbolic link; it is not replaced"):
        save_pretrained_atomically(link, _Writes("config.json", "{}"), overwrite=True)
    assert link.is_symlink() and (real / "config.json").read_text() == "kept"

    with pytest.raises(NotADirectoryError, match=r"model is a file, so .*model/sub cannot be created there"):
        save_pretrained_atomically(target / "sub", _Writes("config.json", "{}"))
    assert target.read_text() == "precious"


def test_an_input_folder_or_a_parent_of_one_is_never_replaced(tmp_path, monkeypatch):
    model_dir = tmp_path / "run" / "model"
    save_pretrained_atomically(model_dir, _Writes("config.json", "input"))
    with pytest.raises(ValueError, match=f"model is the same folder as the model folder {model_dir}; saving there"):
        check_output_dir(model_dir, protect={None: "nothing", model_dir: "the model folder"})
    for target, relation in ((model_dir, "is the same folder as"), (tmp_path / "run", "is a parent folder of")):
        for overwrite in (False, True):
            with pytest.raises(ValueError) as error:
                save_pretrained_atomically(
                    target, _Writes("config.json", "new"), overwrite=overwrite, protect=[None, str(model_dir)]
                )
            assert str(error.value) == (
                f"{target} {relation} {model_dir}, which this run reads or writes; saving "
                "there would delete it. Choose another output folder."
            )
    assert (model_dir / "config.json").read_text() == "input"
    assert sorted(os.listdir(tmp_path / "run")) == ["model"]
    # Compared after resolving links: a link to a parent of the input is the same folder.
    (tmp_path / "alias").symlink_to(tmp_path / "run")
    with pytest.raises(ValueError, match="is a parent folder of"):
        check_output_dir(tmp_path / "alias" / "model" / "..", protect=[model_dir])

    monkeypatch.chdir(model_dir)
    with pytest.raises(
        ValueError,
        match=r"run is a parent folder of the current folder; saving there would delete "
        r"it\.",
    ):
        save_pretrained_atomically(tmp_path / "run", _Writes("config.json", "new"), overwrite=True)
    assert (model_dir / "config.json").read_text() == "input"


# ---------------------------------------------------------------------------------------------- Hub folders


def test_hub_folders_share_the_rule_but_ask_for_overwrite_before_replacing_anything(tmp_path, processor):
    model = make_model()
    target = tmp_path / "hub"
    target.write_text("precious")
    with pytest.raises(FileExistsError, match="exists and is a file, not a folder"):
        save_hub_folder(model, processor, target, overwrite=True)
    assert target.read_text() == "precious"
    target.unlink()

    mine = _user_folder(tmp_path / "mine")
    with pytest.raises(
        FileExistsError,
        match=r"mine is not empty; pass overwrite=True \(--overwrite on the command "
        r"line\) to replace it",
    ):
        save_hub_folder(model, processor, tmp_path / "mine")
    assert _snapshot(tmp_path / "mine") == mine

    with pytest.raises(ValueError, match=r"is a parent folder of .*towers/vision, which this run reads or writes"):
        save_hub_folder(model, processor, tmp_path, overwrite=True, protect=[tmp_path / "towers" / "vision"])
    assert _snapshot(tmp_path / "mine") == mine


def test_publish_protects_every_input_path_of_the_command(tmp_path, processor):
    model_dir = tmp_path / "trained"
    model = make_model()
    model.save_pretrained(model_dir)
    before = _snapshot(model_dir)
    args = argparse.Namespace(
        model_dir=str(model_dir),
        output_dir=str(model_dir),
        push_to_hub=None,
        local_dir_only=True,
        license="apache-2.0",
        max_shard_size="5GB",
        overwrite=True,
        private=False,
        token=None,
    )
    with pytest.raises(ValueError, match=f"trained is the same folder as --model_dir {model_dir}; saving there"):
        publish(model, processor, args, base_models=[])
    assert _snapshot(model_dir) == before


# ---------------------------------------------------------------------------------------------- permissions


def test_saved_folders_get_the_umask_permissions_not_mkdtemp_ones(tmp_path, processor, umask):
    expected = 0o777 & ~umask  # what os.makedirs gives
    out = tmp_path / "new" / "model"
    save_pretrained_atomically(out, make_model(), processor)
    assert _mode(out) == expected and _mode(out.parent) == expected
    save_pretrained_atomically(out, make_model(seed=1), processor)  # the replacement too
    assert _mode(out) == expected
    hub = save_hub_folder(make_model(), processor, tmp_path / "hub")
    assert _mode(hub) == expected
    for folder in (out, hub):  # safetensors 0.8 writes 0o600 files; a plain open() gives this
        assert {name: _mode(folder / name) for name in os.listdir(folder)} == dict.fromkeys(
            os.listdir(folder), 0o666 & ~umask
        )


def test_trainer_checkpoints_get_the_umask_permissions(tmp_path, processor, umask):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(4)]
    data = Dataset.from_dict(
        {"image": images, "caption": ["a red circle", "a blue square", "a green triangle", "a photo of this"]}
    )
    torch.manual_seed(0)
    model = BridgeForPreTraining(make_config())
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        max_steps=1,
        save_steps=1,
        per_device_train_batch_size=4,
        report_to=[],
        use_cpu=True,
        remove_unused_columns=False,
        disable_tqdm=True,
    )
    BridgeTrainer(
        model=model, args=args, train_dataset=data, data_collator=BridgeDataCollator(processor, max_length=16)
    ).train()
    assert os.listdir(tmp_path / "run") == ["checkpoint-1"]
    checkpoint = tmp_path / "run" / "checkpoint-1"
    assert _mode(checkpoint) == 0o777 & ~umask
    assert "model.safetensors" in os.listdir(checkpoint)
    assert {name: _mode(checkpoint / name) for name in os.listdir(checkpoint)} == dict.fromkeys(
        os.listdir(checkpoint), 0o666 & ~umask
    )
    assert isinstance(BridgeModel.from_pretrained(checkpoint), BridgeModel)


def _train(tmp_path, processor, run, **overrides):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(4)]
    data = Dataset.from_dict(
        {"image": images, "caption": ["a red circle", "a blue square", "a green triangle", "a photo of this"]}
    )
    torch.manual_seed(0)
    settings = dict(max_steps=1, save_steps=1, per_device_train_batch_size=4, report_to=[], use_cpu=True)
    args = TrainingArguments(
        output_dir=str(run), remove_unused_columns=False, disable_tqdm=True, **{**settings, **overrides}
    )
    collator = BridgeDataCollator(processor, max_length=16)
    BridgeTrainer(
        model=BridgeForPreTraining(make_config()), args=args, train_dataset=data, data_collator=collator
    ).train()


def test_trainer_never_replaces_nor_rotates_away_a_users_checkpoint_folder(tmp_path, processor):
    """1c168be replaced an existing checkpoint-N folder and let transformers' rotation delete `checkpoint-*` folders by
    their names; now only checkpoints this package wrote (and nobody changed) are replaced or rotated."""
    run = tmp_path / "run"
    mine = _user_folder(run / "checkpoint-1")
    with pytest.raises(FileExistsError, match=r"checkpoint-1 exists and was not written by BridgeTrainer, or changed"):
        _train(tmp_path, processor, run)
    assert _snapshot(run / "checkpoint-1") == mine
    shutil.rmtree(run)

    older = _user_folder(run / "checkpoint-0")  # sorts first: transformers' rotation would delete it
    _train(tmp_path, processor, run, max_steps=3, save_total_limit=1)
    assert sorted(os.listdir(run)) == ["checkpoint-0", "checkpoint-3"] and _snapshot(run / "checkpoint-0") == older
    assert package_wrote(run / "checkpoint-3")
    _train(tmp_path, processor, run, max_steps=3, save_total_limit=1)  # the same steps again: its own are replaced
    assert sorted(os.listdir(run)) == ["checkpoint-0", "checkpoint-3"] and _snapshot(run / "checkpoint-0") == older


def test_a_staging_folder_of_the_users_name_is_not_deleted_by_the_trainer(tmp_path, processor):
    run = tmp_path / "run"
    mine = _user_folder(run / ".staging-checkpoint-1")  # the trainer's staging name, but not made by it
    with pytest.raises(FileExistsError, match=r"\.staging-checkpoint-1 exists and was not made by BridgeTrainer"):
        _train(tmp_path, processor, run)
    assert _snapshot(run / ".staging-checkpoint-1") == mine


def test_a_cache_never_replaces_a_saved_model_nor_a_save_a_cache(tmp_path, processor):
    """1c168be (and the first ownership record) let a mistyped cache_dir replace a trained model the package saved."""
    from modeling_bridge.retrieval import build_gallery

    model, out = make_model(), tmp_path / "my-bridge"
    save_pretrained_atomically(out, model, processor)
    before = _snapshot(out)
    with pytest.raises(FileExistsError) as error:
        build_gallery(model, processor, texts=["a red circle", "a blue square"], cache_dir=out, progress=False)
    assert str(error.value) == (
        f"{out} holds a model save that this package wrote, not a gallery; it is not replaced by one (a mistyped "
        "folder must not cost a trained model or a cache). Choose another output folder, or pass overwrite=True "
        "(--overwrite on the command line) to replace it."
    )
    assert _snapshot(out) == before
    pytest.importorskip("faiss")
    cache = tmp_path / "gallery"
    build_gallery(model, processor, texts=["a red circle"], cache_dir=cache, progress=False)
    with pytest.raises(FileExistsError, match="holds a gallery that this package wrote, not a model save"):
        save_pretrained_atomically(cache, model)
    assert package_wrote(cache, kind="gallery") and not package_wrote(cache, kind="model save")
