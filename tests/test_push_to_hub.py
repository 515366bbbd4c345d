"""Hub-ready folders: sharded weights, model card metadata, remote-code loading and the zero-shot pipeline without
the package, atomic writes, and uploads (mocked, and against an unreachable endpoint)."""

import fnmatch
import importlib.util
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

from conftest import make_model, random_inputs, run_as_hub_code
from modeling_bridge import BridgeModel, hub_utils
from modeling_bridge.hub_utils import HubUploadError, build_model_card, save_hub_folder, upload_hub_folder
from modeling_bridge.saving import OWNERSHIP_FILE


ROOT = Path(__file__).resolve().parents[1]
BASES = ["google/vit-base-patch16-224-in21k", "sentence-transformers/all-MiniLM-L6-v2"]


def load_cli():
    spec = importlib.util.spec_from_file_location("push_to_hub", ROOT / "conversion" / "push_to_hub.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def hub_folder(tmp_path, model, processor):
    card = build_model_card(model.config, base_models=BASES, repo_id="someone/bridge-tiny", tags=["tiny"])
    return save_hub_folder(model, processor, tmp_path / "hub", card=card, max_shard_size="60KB")


def test_folder_has_sharded_safetensors_code_files_and_auto_map(hub_folder, model):
    files = {p.name for p in hub_folder.iterdir()}
    assert {
        "config.json",
        "model.safetensors.index.json",
        "configuration_bridge.py",
        "modeling_bridge.py",
        "processing_bridge.py",
        "processor_config.json",
        "tokenizer_config.json",
        "README.md",
    } <= files
    shards = sorted(f for f in files if f.endswith(".safetensors"))
    assert len(shards) > 1 and not any(f.endswith((".bin", ".pt")) for f in files)
    index = json.loads((hub_folder / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    assert (
        json.loads((hub_folder / "config.json").read_text())["auto_map"]["AutoModelForZeroShotImageClassification"]
        == "modeling_bridge.BridgeModel"
    )
    reloaded = BridgeModel.from_pretrained(hub_folder)
    for key, value in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key
    assert not [p for p in hub_folder.parent.iterdir() if p.name.startswith(".hub.")]  # no staging left behind


def test_model_card_parses_and_carries_the_metadata(hub_folder):
    card = ModelCard.load(hub_folder / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "transformers"
    assert data["pipeline_tag"] == "zero-shot-image-classification"
    assert data["base_model"] == BASES
    assert data["license"] == "apache-2.0"
    assert {"bridge", "custom_code", "tiny"} <= set(data["tags"])
    assert 'AutoModel.from_pretrained("someone/bridge-tiny", trust_remote_code=True)' in card.text
    assert "transformers>=5" in card.text
    # Local tower paths are not valid `base_model` entries on the Hub: they are left out.
    local = build_model_card(make_model().config, base_models=[str(hub_folder), BASES[1]])
    assert local.data.base_model == [BASES[1]]


def test_an_existing_folder_is_replaced_only_when_asked_and_never_half_written(
    tmp_path, model, processor, monkeypatch
):
    target = tmp_path / "hub"
    save_hub_folder(model, processor, target)
    with pytest.raises(FileExistsError, match="is not empty; pass overwrite=True"):
        save_hub_folder(model, processor, target)
    before = sorted(p.name for p in target.iterdir())

    def failing_save(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(processor, "save_pretrained", failing_save)
    with pytest.raises(RuntimeError, match="disk full"):
        save_hub_folder(make_model(seed=1), processor, target, overwrite=True)
    assert sorted(p.name for p in target.iterdir()) == before  # the old folder is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hub"]  # and the staging folder is gone
    reloaded = BridgeModel.from_pretrained(target)
    assert torch.equal(reloaded.logit_scale.value, model.logit_scale.value)


REMOTE_SCRIPT = textwrap.dedent(  # run by run_as_hub_code: modeling_bridge is not importable there
    """
    import json, sys
    import torch
    from PIL import Image
    from transformers import AutoModel, pipeline
    folder, inputs_path, out_path = sys.argv[1:4]
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    with torch.no_grad():
        logits = model(**torch.load(inputs_path, weights_only=True), score="fused").logits_per_image.tolist()
    classifier = pipeline("zero-shot-image-classification", model=folder, trust_remote_code=True)
    result = classifier(Image.new("RGB", (40, 40), (200, 30, 30)), candidate_labels=["a red circle", "a blue square"])
    json.dump({"module": type(model).__module__, "logits": logits, "pipeline": result}, open(out_path, "w"))
    """
)


def test_hub_folder_loads_as_remote_code_and_runs_the_pipeline(hub_folder, model, tmp_path):
    pixel_values, input_ids, attention_mask = random_inputs(2, 3)
    inputs = {"pixel_values": pixel_values, "input_ids": input_ids, "attention_mask": attention_mask}
    torch.save(inputs, tmp_path / "inputs.pt")
    out = run_as_hub_code(tmp_path, REMOTE_SCRIPT, hub_folder, tmp_path / "inputs.pt")
    assert out["module"].startswith("transformers_modules.")
    with torch.no_grad():
        assert torch.equal(torch.tensor(out["logits"]), model(**inputs, score="fused").logits_per_image)
    assert sorted(r["label"] for r in out["pipeline"]) == ["a blue square", "a red circle"]
    assert sum(r["score"] for r in out["pipeline"]) == pytest.approx(1.0, abs=1e-5)


class RecordingApi:
    calls = []

    def __init__(self, endpoint=None, token=None):
        self.endpoint = endpoint or "https://huggingface.co"
        RecordingApi.calls.append(("init", token))

    def create_repo(self, repo_id, **kwargs):
        RecordingApi.calls.append(("create_repo", repo_id, kwargs.get("private")))

    def upload_folder(self, folder_path, repo_id, **kwargs):
        ignored = kwargs.get("ignore_patterns") or []
        uploaded = sorted(n for n in os.listdir(folder_path) if not any(fnmatch.fnmatch(n, p) for p in ignored))
        RecordingApi.calls.append(("upload_folder", repo_id, uploaded))
        return type("Commit", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/abc"})()


def test_push_command_uploads_the_folder_in_one_commit(tmp_path, model, processor, monkeypatch, capsys):
    model.save_pretrained(tmp_path / "trained")
    processor.save_pretrained(tmp_path / "trained")
    monkeypatch.setattr(hub_utils, "HfApi", RecordingApi)
    RecordingApi.calls = []
    cli = load_cli()
    code = cli.run_command(
        cli.main,
        [
            "--model_dir",
            str(tmp_path / "trained"),
            "--output_dir",
            str(tmp_path / "hub"),
            "--push_to_hub",
            "someone/bridge",
            "--token",
            "hf_test",
            "--private",
            "--base_model",
            BASES[0],
        ],
    )
    assert code == 0, capsys.readouterr().err
    uploads = [c for c in RecordingApi.calls if c[0] == "upload_folder"]
    assert RecordingApi.calls[:2] == [("init", "hf_test"), ("create_repo", "someone/bridge", True)]
    assert len(uploads) == 1 and uploads[0][1] == "someone/bridge"
    assert {"README.md", "config.json", "modeling_bridge.py", "processing_bridge.py"} <= set(uploads[0][2])
    assert OWNERSHIP_FILE in os.listdir(tmp_path / "hub") and OWNERSHIP_FILE not in uploads[0][2]  # local bookkeeping
    assert "uploaded to https://huggingface.co/someone/bridge/commit/abc" in capsys.readouterr().out
    assert ModelCard.load(tmp_path / "hub" / "README.md").data.base_model == [BASES[0]]

    # --local_dir_only writes the folder and uploads nothing.
    RecordingApi.calls = []
    assert (
        cli.run_command(
            cli.main,
            [
                "--model_dir",
                str(tmp_path / "trained"),
                "--output_dir",
                str(tmp_path / "hub2"),
                "--push_to_hub",
                "someone/bridge",
                "--local_dir_only",
            ],
        )
        == 0
    )
    assert RecordingApi.calls == [] and (tmp_path / "hub2" / "config.json").is_file()


def test_missing_token_and_bad_inputs_give_one_line(tmp_path, model, processor, monkeypatch, capsys):
    model.save_pretrained(tmp_path / "trained")
    processor.save_pretrained(tmp_path / "trained")
    monkeypatch.setattr(hub_utils, "get_token", lambda: None)
    cli = load_cli()
    capsys.readouterr()  # drop what saving the fixtures logged
    argv = [
        "--model_dir",
        str(tmp_path / "trained"),
        "--output_dir",
        str(tmp_path / "hub"),
        "--push_to_hub",
        "someone/bridge",
    ]
    assert cli.run_command(cli.main, argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no Hugging Face token") and err.count("\n") == 1
    assert not (tmp_path / "hub").exists()  # it failed before converting or writing anything
    with pytest.raises(HubUploadError, match="no Hugging Face token"):
        upload_hub_folder(tmp_path / "trained", "someone/bridge")
    with pytest.raises(FileNotFoundError, match="holds no config.json"):
        upload_hub_folder(tmp_path / "trained" / "nothing", "someone/bridge", token="x")
    for bad, message in (
        (["--model_dir", str(tmp_path / "none"), "--output_dir", str(tmp_path / "x")], "holds no config.json"),
        (
            ["--model_dir", str(tmp_path / "trained"), "--output_dir", str(tmp_path / "trained")],
            "--output_dir must differ",
        ),
    ):
        assert cli.run_command(cli.main, bad) == 1
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1


def test_unreachable_endpoint_gives_one_line_and_a_nonzero_exit(hub_folder, tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = (
        "import sys; from modeling_bridge.hub_utils import run_command, upload_hub_folder\n"
        f"sys.exit(run_command(lambda argv: upload_hub_folder({str(hub_folder)!r}, 'someone/bridge')))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(
        HF_ENDPOINT=f"http://127.0.0.1:{port}",
        HF_TOKEN="hf_fake",
        HF_HUB_ETAG_TIMEOUT="2",
        HF_HUB_DOWNLOAD_TIMEOUT="2",
        HF_HOME=str(tmp_path / "hf_home"),
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error: upload of {hub_folder} to http://127.0.0.1:{port}/someone/bridge failed:")
    assert "Traceback" not in done.stderr


def test_a_folder_that_is_not_bridge_is_refused_with_what_to_run_instead(tmp_path, capsys):
    from transformers import ViTConfig, ViTModel

    ViTModel(
        ViTConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=4,
            intermediate_size=64,
            image_size=32,
            patch_size=8,
        )
    ).save_pretrained(tmp_path / "vit")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    cli = load_cli()
    for folder, expected in (
        (
            "vit",
            f"error: {tmp_path / 'vit'} is not a BRIDGE model folder: its config.json has model_type 'vit', not "
            "'bridge'. To build a BRIDGE model around pretrained towers, run conversion/build_from_encoders.py "
            "--vision_model DIR --text_model DIR;",
        ),
        ("broken", f"error: {tmp_path / 'broken' / 'config.json'} is not a readable model config ("),
    ):
        capsys.readouterr()
        assert (
            cli.run_command(
                cli.main,
                ["--model_dir", str(tmp_path / folder), "--output_dir", str(tmp_path / "hub"), "--local_dir_only"],
            )
            == 1
        )
        err = capsys.readouterr().err
        assert err.startswith(expected) and err.count("\n") == 1, err
    assert not (tmp_path / "hub").exists()
