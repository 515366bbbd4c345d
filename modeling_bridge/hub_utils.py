"""Writing Hub-ready BRIDGE folders, model cards, and uploading them (library code, not Hub code).

Used by the commands in `conversion/` and reusable by the training examples: `save_hub_folder` writes everything a
Hub repo needs (sharded safetensors, config with `auto_map`, the three code files, processor files, model card) to a
temporary folder and renames it into place, and `upload_hub_folder` pushes such a folder in a single commit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from huggingface_hub import HfApi, ModelCard, ModelCardData, get_token

from .configuration_bridge import is_local_only_path, tower_hidden_size
from .saving import OWNERSHIP_FILE, apply_default_permissions, check_output_dir, make_staging_dir, replace_directory


BRIDGE_TAGS = ["bridge", "vision-language", "zero-shot-image-classification", "image-text-retrieval", "custom_code"]


class HubUploadError(RuntimeError):
    """An upload that could not be done; the message is one line, meant for the command line."""


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or "no details"
    return f"{type(error).__name__}: {text[:300]}"


def build_model_card(
    config,
    base_models: list[str] | tuple[str, ...] = (),
    license: str = "apache-2.0",
    repo_id: str | None = None,
    tags: list[str] | tuple[str, ...] = (),
    description: str | None = None,
) -> ModelCard:
    """Model card of a BRIDGE model: Hub metadata (library, pipeline tag, base models, tags, license) and a usage
    snippet with `trust_remote_code=True`. `base_models` are Hub ids of the towers (local paths are left out: the
    Hub rejects them as `base_model`)."""
    hub_bases = [b for b in base_models if b and not os.path.exists(b) and not os.path.isabs(b)]
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="zero-shot-image-classification",
        base_model=hub_bases or None,
        license=license,
        tags=list(dict.fromkeys([*BRIDGE_TAGS, *tags])),
    )
    name = repo_id or "path/to/this-folder"
    vision, text = config.vision_config, config.text_config
    towers = ", ".join(f"`{b}`" for b in base_models) if base_models else "see `config.json`"
    intro = description or (
        "A BRIDGE vision-language model: a pretrained vision tower and a pretrained text tower joined by cross-only, "
        "bidirectional attention layers (arXiv 2511.11526)."
    )
    content = f"""---
{data.to_yaml()}
---

# BRIDGE: {vision.model_type} + {text.model_type}

{intro}

- towers: {towers} (vision `{vision.model_type}`, hidden size {tower_hidden_size(vision)}; text
  `{text.model_type}`, hidden size {text.hidden_size})
- interaction: {config.num_interaction_layers} layers, shared dim {config.shared_dim}, {config.num_interaction_heads}
  heads, embeddings of size {config.projection_dim}, `cross_embed_source="{config.cross_embed_source}"`
- scores: `"unimodal"` (bi-encoder), `"fused"` (default here: `"{config.default_score}"`) and `"itm"`; the score of
  an (image, text) pair never depends on the rest of the batch.

## Usage

Requires `transformers>=5`. The model code is stored next to the weights, so load it with `trust_remote_code=True`:

```python
from transformers import AutoModel, AutoProcessor, pipeline

model = AutoModel.from_pretrained("{name}", trust_remote_code=True)
processor = AutoProcessor.from_pretrained("{name}", trust_remote_code=True)
inputs = processor(images=image, text=["a photo of a cat", "a photo of a dog"], return_tensors="pt")
scores = model(**inputs, score="fused").logits_per_image   # (n_images, n_texts)

classifier = pipeline("zero-shot-image-classification", model="{name}", trust_remote_code=True)
classifier(image, candidate_labels=["a cat", "a dog"])
```
"""
    return ModelCard(content)


def save_hub_folder(
    model,
    processor,
    output_dir: str | os.PathLike,
    card: ModelCard | None = None,
    max_shard_size: str | int = "5GB",
    overwrite: bool = False,
    protect=(),
) -> Path:
    """Write a Hub-ready folder: safetensors weights (sharded past `max_shard_size`), `config.json` with `auto_map`,
    `configuration_bridge.py` / `modeling_bridge.py` / `loss_bridge.py` / `loading_bridge.py` / `processing_bridge.py`,
    the processor files and `README.md` (without a processor: a folder that `AutoModel` loads, but not
    `AutoProcessor` or the pipeline).

    Everything is written to a temporary sibling folder first and renamed into place at the end. The destination
    follows `modeling_bridge.saving.check_output_dir`, stricter in one point: any non-empty `output_dir`, even a
    previous Hub folder, is replaced only with `overwrite=True` (the conversion commands' `--overwrite`). A file,
    or a folder that is or contains a `protect`ed path (the command's inputs), is never replaced.
    """
    target = check_output_dir(output_dir, overwrite=overwrite, protect=protect, replace_previous_save=False)
    staging = make_staging_dir(target)
    try:
        model.save_pretrained(staging, max_shard_size=max_shard_size)
        code_files = ["configuration_bridge.py", "modeling_bridge.py", "loss_bridge.py", "loading_bridge.py"]
        if processor is not None:
            processor.save_pretrained(staging)
            code_files.append("processing_bridge.py")
        (card or build_model_card(model.config)).save(staging / "README.md")
        missing = [f for f in code_files if not (staging / f).is_file()]
        if missing:
            raise RuntimeError(
                f"save_pretrained did not write the Hub code files {missing}; is `modeling_bridge` "
                "imported (it registers the classes for auto_map)?"
            )
        apply_default_permissions(staging)
        replace_directory(
            staging,
            target,
            check=lambda: check_output_dir(output_dir, overwrite, protect, replace_previous_save=False),
            kind="Hub folder",
        )
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def check_model_path(path: str | os.PathLike, what: str = "model folder") -> None:
    """Fail early, naming `path`, when it can only be a local path (not a valid Hub repo id: several `/`, a leading
    `.`, `/` or `~`, ...) and does not exist; `from_pretrained` would otherwise report a malformed repo id."""
    path = os.fspath(path)
    if is_local_only_path(path) and not os.path.exists(path):
        raise FileNotFoundError(f"{what} {path} does not exist.")


def explain_load_error(path: str | os.PathLike, what: str, error: OSError) -> OSError:
    """An OSError for a failed `from_pretrained(path)` that says which input it was; for a path that is not a local
    folder, that it was looked up on the Hub (so a mistyped local path reads as one)."""
    path = os.fspath(path)
    detail = " ".join(str(error).split())
    if os.path.exists(path):
        return OSError(f"cannot load the {what} from {path}: {detail}")
    return OSError(f"{what} {path} is not a local folder, and loading it as a Hub repo failed: {detail}")


def resolve_token(token: str | None = None) -> str:
    """`token`, else HF_TOKEN / the stored login; HubUploadError when there is none."""
    token = token or get_token()
    if not token:
        raise HubUploadError(
            "no Hugging Face token: run `hf auth login`, set HF_TOKEN, or pass --token (use --local_dir_only to "
            "only write the folder)."
        )
    return token


def check_upload_possible(args) -> None:
    """Called by the commands before any heavy work: a push without a token fails at once, not after converting."""
    if args.push_to_hub and not args.local_dir_only:
        args.token = resolve_token(args.token)


def upload_hub_folder(
    folder: str | os.PathLike,
    repo_id: str,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str = "Upload BRIDGE model",
    endpoint: str | None = None,
) -> str:
    """Create `repo_id` if needed and upload `folder` as one commit; returns the commit URL.

    Raises `HubUploadError` with a one-line message when there is no token, the endpoint cannot be reached or the
    Hub refuses the upload; nothing is committed in that case (`upload_folder` is a single commit).
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} holds no config.json; write it with save_hub_folder first.")
    token = resolve_token(token)
    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            repo_type="model",
            commit_message=commit_message,
            ignore_patterns=[OWNERSHIP_FILE],  # local bookkeeping, meaningless in the repo
        )
    except Exception as error:  # network, auth, permission: all end the command with one line
        raise HubUploadError(f"upload of {folder} to {api.endpoint}/{repo_id} failed: {_one_line(error)}") from error
    return str(getattr(commit, "commit_url", commit))


def add_hub_arguments(parser) -> None:
    """The output options shared by the conversion commands."""
    group = parser.add_argument_group("Hub")
    group.add_argument("--push_to_hub", metavar="REPO_ID", help="upload the folder to this Hub repo (one commit)")
    group.add_argument("--local_dir_only", action="store_true", help="write the Hub-ready folder but do not upload it")
    group.add_argument("--max_shard_size", default="5GB", help="shard the safetensors weights past this size")
    group.add_argument("--license", default="apache-2.0", help="license in the model card metadata")
    group.add_argument("--private", action="store_true", help="create the Hub repo as private")
    group.add_argument("--token", help="Hugging Face token (default: HF_TOKEN or the stored login)")
    group.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a non-empty output_dir (never a file, nor a folder holding an input)",
    )


def publish(model, processor, args, base_models, description=None) -> Path:
    """Write the Hub-ready folder for a command's `args` and upload it, unless `--local_dir_only` or no
    `--push_to_hub`."""
    if args.push_to_hub and not args.local_dir_only and processor is None:
        raise ValueError(
            "no processor (image processor + tokenizer) was found for the towers, and a Hub repo without one cannot "
            "serve AutoProcessor or the zero-shot pipeline; pass --vision_model / --text_model folders that hold them."
        )
    card = build_model_card(
        model.config, base_models=base_models, license=args.license, repo_id=args.push_to_hub, description=description
    )
    # Every existing path the command was given (model folder, checkpoint, towers, config) is an input to keep.
    inputs = {
        value: f"--{name}"
        for name, value in vars(args).items()
        if name != "output_dir" and isinstance(value, str) and value and os.path.exists(value)
    }
    folder = save_hub_folder(
        model,
        processor,
        args.output_dir,
        card=card,
        max_shard_size=args.max_shard_size,
        overwrite=args.overwrite,
        protect=inputs,
    )
    print(f"wrote {folder}")
    if args.push_to_hub and not args.local_dir_only:
        url = upload_hub_folder(folder, args.push_to_hub, token=args.token, private=args.private or None)
        print(f"uploaded to {url}")
    return folder


@contextlib.contextmanager
def progress_bars(enabled: bool = True):
    """With `enabled=False`, hide transformers' and datasets' progress bars (loading / writing weights, dataset
    preparation) inside the block, and restore their previous state after it (`--disable_tqdm` of the examples)."""
    from datasets.utils import disable_progress_bars, enable_progress_bars, is_progress_bar_enabled
    from transformers.utils import logging as transformers_logging

    if enabled:
        yield
        return
    previous = transformers_logging.is_progress_bar_enabled(), is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    disable_progress_bars()
    try:
        yield
    finally:
        if previous[0]:
            transformers_logging.enable_progress_bar()
        if previous[1]:
            enable_progress_bars()


def run_command(main, argv=None) -> int:
    """Run a command's `main(argv)`, turning expected failures into one `error: ...` line on stderr and exit code 1
    (bad input and Hub failures are the user's to fix, not tracebacks)."""
    import sys

    try:
        main(argv)
    except (HubUploadError, ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, OSError) as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    return 0


__all__ = [
    "HubUploadError",
    "add_hub_arguments",
    "build_model_card",
    "check_model_path",
    "check_upload_possible",
    "explain_load_error",
    "progress_bars",
    "publish",
    "resolve_token",
    "run_command",
    "save_hub_folder",
    "upload_hub_folder",
]
