"""Trainer integration: per-component loss logging, exact resume and crash-safe checkpoints.

Public Trainer hooks do most of it: `compute_loss` and `log` (component logging), `get_train_dataloader` and a
`TrainerCallback` (per-batch collator seeds). Two things have no public hook and override private Trainer methods;
they sit together at the end of `BridgeTrainer`, and `check_private_trainer_api` (run by `BridgeTrainer.__init__`)
stops with a clear error if transformers changes one of those methods' signatures:

- crash-safe checkpoints (`_save_checkpoint`, redirecting `_get_output_dir`): Trainer writes `checkpoint-N` in place,
  file by file, and its only hook, `on_save`, runs after the writes;
- the resume workaround for transformers issue #43701 (`_load_from_checkpoint`, `_load_best_model`), used only while
  `trainer_restores_vit_weights` finds that Trainer's own loading still loses a ViT tower's weights.
"""

import inspect
import logging
import os
import shutil
import tempfile
from collections import defaultdict

import torch
import transformers
from transformers import PreTrainedModel, Trainer, TrainerCallback, ViTConfig, ViTModel
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, sort_checkpoints
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, WEIGHTS_INDEX_NAME, WEIGHTS_NAME
from transformers.utils import logging as transformers_logging

from ..configuration_bridge import LOSS_COMPONENTS
from ..saving import (
    apply_default_permissions,
    foreign_entries,
    package_wrote,
    read_ownership_kind,
    replace_directory,
    save_pretrained_atomically,
    write_ownership_record,
)


# The private Trainer methods BridgeTrainer overrides or replaces, with the parameters (after self) it expects.
PRIVATE_TRAINER_METHODS = {
    "_save_checkpoint": ("model", "trial"),
    "_get_output_dir": ("trial",),
    "_load_from_checkpoint": ("resume_from_checkpoint", "model"),
    "_load_best_model": (),
}


def check_private_trainer_api(trainer_class: type = Trainer) -> None:
    """Raise a RuntimeError naming every method of `PRIVATE_TRAINER_METHODS` that `trainer_class` lacks or defines
    with other parameters: after such a change, BridgeTrainer's overrides would be bypassed or called wrongly."""
    problems = []
    for name, expected in PRIVATE_TRAINER_METHODS.items():
        method = getattr(trainer_class, name, None)
        if not callable(method):
            problems.append(f"{name} is gone")
            continue
        found = tuple(inspect.signature(method).parameters)[1:]
        if found != expected:
            problems.append(f"{name}({', '.join(found)}) instead of {name}({', '.join(expected)})")
    if problems:
        raise RuntimeError(
            f"BridgeTrainer overrides private methods of transformers' Trainer that transformers "
            f"{transformers.__version__} changed: {'; '.join(problems)}. Crash-safe checkpoints and the resume "
            "workaround in modeling_bridge/training/trainer.py must be updated for this version (or install the "
            "transformers version it was written for)."
        )


_TRAINER_RESTORES_VIT: bool | None = None  # trainer_restores_vit_weights' answer, the same for the whole process


def trainer_restores_vit_weights(trainer: Trainer) -> bool:
    """Whether Trainer's own checkpoint loading restores a ViT model saved by `save_pretrained` (transformers issue
    #43701): probed once per process on a tiny ViT, so the workaround turns itself off once transformers is fixed.

    transformers 5.x `save_pretrained` writes ViT and DINOv2 blocks under their legacy names
    (`encoder.layer.N.attention.attention.query` for `layers.N.attention.q_proj`); only `from_pretrained` maps them
    back, while Trainer's resume calls `load_state_dict(strict=False)` on the raw file, skips them with a warning and
    continues from the initial vision blocks."""
    global _TRAINER_RESTORES_VIT
    if _TRAINER_RESTORES_VIT is None:
        config = ViTConfig(
            hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8, image_size=4, patch_size=2
        )
        trainer_logger = logging.getLogger("transformers.trainer")
        bars, level = transformers_logging.is_progress_bar_enabled(), trainer_logger.level
        transformers_logging.disable_progress_bar()
        trainer_logger.setLevel(logging.ERROR)  # its missing/unexpected keys warnings are the expected outcome here
        try:
            with torch.random.fork_rng(devices=[]), tempfile.TemporaryDirectory() as folder:
                saved = ViTModel(config, add_pooling_layer=False)
                saved.save_pretrained(folder)
                loaded = ViTModel(config, add_pooling_layer=False)
                with torch.no_grad():
                    for parameter in loaded.parameters():
                        parameter.zero_()
                Trainer._load_from_checkpoint(trainer, folder, loaded)
                expected = saved.state_dict()
                _TRAINER_RESTORES_VIT = all(
                    torch.equal(value, expected[name]) for name, value in loaded.state_dict().items()
                )
        finally:
            trainer_logger.setLevel(level)
            if bars:
                transformers_logging.enable_progress_bar()
    return _TRAINER_RESTORES_VIT


class _SeededCollation(TrainerCallback):
    """Collates training batch i under its own seed, a function of (seed, rank, i), leaving torch's global generator
    untouched, so batch i gets the same MLM/MIM masks whenever it is built, before or after a resume.

    BridgeDataCollator draws its masks from the global generator, and accelerate's dataloader collates one batch
    ahead: the uninterrupted run built batch k+1 before step k's forward pass, while the checkpoint of step k holds
    the generator state after it, so a resumed run could not rebuild batch k+1's masks. Trainer's checkpointed RNG
    state then covers the rest (dropout, negative sampling) exactly.

    `on_epoch_begin` (before the epoch's first batch is collated) sets the index of the batch the epoch builds first:
    Trainer starts epoch `global_step // steps_per_epoch` and, resuming, skips the batches of the steps already taken
    in it (unless `ignore_data_skip`), without collating them."""

    def __init__(self):
        self.collator, self.seed, self.rank, self.next_index = None, 0, 0, 0

    def wrap(self, collator, seed: int, rank: int):
        self.collator, self.seed, self.rank = collator, seed, rank
        return self.collate

    def collate(self, rows):
        seed = ((self.seed * 1_000_003 + self.rank) * 1_000_003 + self.next_index) % 2**63
        self.next_index += 1
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(seed)
            return self.collator(rows)

    def on_epoch_begin(self, args, state, control, train_dataloader=None, **kwargs):
        if self.collator is None or train_dataloader is None:
            return
        batches_per_epoch = len(train_dataloader)
        steps_per_epoch = max(1, -(-batches_per_epoch // args.gradient_accumulation_steps))
        epochs, steps = divmod(state.global_step, steps_per_epoch)
        skipped = 0 if args.ignore_data_skip else steps * args.gradient_accumulation_steps
        self.next_index = epochs * batches_per_epoch + skipped


CHECKPOINT_KIND = "Trainer checkpoint"
STAGING_KIND = "Trainer checkpoint staging folder"


def _check_own_checkpoint(path: str) -> None:
    """A checkpoint folder is replaced (a run repeating a step) only if this package wrote it, unchanged."""
    if not os.path.lexists(path) or package_wrote(path, kind=CHECKPOINT_KIND):
        return
    folder = os.path.isdir(path) and not os.path.islink(path)
    reason = (", ".join(foreign_entries(path)) or "not a checkpoint") if folder else "not a folder"
    raise FileExistsError(
        f"{path} exists and was not written by BridgeTrainer, or changed since ({reason}); it is not replaced. Move "
        "it away, or choose another output_dir."
    )


def _rotate_own_checkpoints(run_dir: str, save_total_limit: int | None, best: str | None) -> None:
    """transformers' `rotate_checkpoints` (keep the newest `save_total_limit`, always the latest and the best), over
    the checkpoints this package wrote only: a `checkpoint-N` folder of the user's is never deleted by its name."""
    if not save_total_limit or save_total_limit <= 0:
        return
    own = [path for path in sort_checkpoints(run_dir, use_mtime=True) if package_wrote(path, kind=CHECKPOINT_KIND)]
    protected = {os.path.abspath(p) for p in own[-1:] + ([best] if best else [])}
    removable = [path for path in own if os.path.abspath(path) not in protected]
    for path in removable[: max(0, len(own) - max(save_total_limit, len(protected)))]:
        transformers_logging.get_logger(__name__).info(f"Deleting older checkpoint {path} (save_total_limit)")
        shutil.rmtree(path, ignore_errors=True)


class BridgeTrainer(Trainer):
    """`Trainer` that logs every loss component of `BridgeForPreTraining` (averaged over the logging window, as
    Trainer does for `loss`), resumes a killed run to the same weights, and writes each checkpoint to a staging folder
    renamed into place when complete, so a run killed mid-save never leaves a checkpoint that
    `resume_from_checkpoint` would pick up half-written."""

    def __init__(self, *args, **kwargs):
        check_private_trainer_api()
        super().__init__(*args, **kwargs)
        if self.args.label_names is None:
            # Trainer would take forward's `mlm_labels` for the label column and, with MLM off, drop `eval_loss`.
            self.args.label_names = []
            self.label_names = []
        self._component_sums = defaultdict(float)
        self._component_counts = defaultdict(int)
        self._seeded_collation = _SeededCollation()
        self.add_callback(self._seeded_collation)

    def get_train_dataloader(self):
        if self.args.dataloader_num_workers > 0 or isinstance(self.train_dataset, torch.utils.data.IterableDataset):
            self._seeded_collation.collator = None
            return super().get_train_dataloader()  # worker processes / streams: Trainer's own seeding applies
        collator = self.data_collator
        self.data_collator = self._seeded_collation.wrap(collator, self.args.seed, self.args.process_index)
        try:
            return super().get_train_dataloader()
        finally:
            self.data_collator = collator

    def get_decay_parameter_names(self, model) -> list[str]:
        """Trainer's choice (no biases, no norms) minus BRIDGE's learned scalars (attention temperatures, gates,
        `logit_scale`, `itc_alpha`): weight decay would pull each towards 0, i.e. tau towards softplus(0) = 0.69,
        gates towards 0.5 and the logit scale towards 1, a prior nobody chose. Found by module class name, so Hub-code
        models and PEFT's `modules_to_save` copies qualify too."""
        scalars = {
            f"{name}.value" for name, module in model.named_modules() if type(module).__name__ == "BridgeScalar"
        }
        return [name for name in super().get_decay_parameter_names(model) if name not in scalars]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if model.training and isinstance(outputs, dict):
            for name in LOSS_COMPONENTS:
                value = outputs.get(name)
                if isinstance(value, torch.Tensor):
                    # kept on the device: converting every step would force a host sync per step
                    self._component_sums[name] = self._component_sums[name] + value.detach().float()
                    self._component_counts[name] += 1
        return (loss, outputs) if return_outputs else loss

    def log(self, logs, start_time=None):
        if "loss" in logs:  # a training log: attach the window's component means, then start a new window
            for name, total in self._component_sums.items():
                logs[name] = round(float(total) / self._component_counts[name], 6)
            self._component_sums.clear()
            self._component_counts.clear()
        super().log(logs, start_time)

    # ---- Private Trainer methods (PRIVATE_TRAINER_METHODS; signatures checked by check_private_trainer_api) ----

    def _save_checkpoint(self, model, trial):
        """Let Trainer write checkpoint-N under `<run dir>/.staging-checkpoint-N/`, then rename it into place and
        rotate the checkpoints of the run dir. `get_last_checkpoint` never picks a staging folder."""
        run_dir = self._get_output_dir(trial=trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging_root = os.path.join(run_dir, f".staging-{name}")
        if self.args.should_save:
            if os.path.lexists(staging_root):  # left by a save killed at this step: start clean, if it is ours
                if read_ownership_kind(staging_root) != STAGING_KIND:
                    raise FileExistsError(
                        f"{staging_root} exists and was not made by BridgeTrainer; it is not deleted. Move it away, "
                        "or choose another output_dir."
                    )
                shutil.rmtree(staging_root)
            os.makedirs(staging_root)
            write_ownership_record(staging_root, STAGING_KIND)  # the proof that a leftover is ours to delete
        self.accelerator.wait_for_everyone()
        self._get_output_dir = lambda trial=None: staging_root  # Trainer writes (and rotates) under this root
        try:
            super()._save_checkpoint(model, trial)
        finally:
            del self._get_output_dir  # the class's method again
        self.accelerator.wait_for_everyone()  # every rank has written its RNG state
        if self.args.should_save:
            staged = os.path.join(staging_root, name)
            if not os.path.isdir(staged):
                raise RuntimeError(
                    f"Trainer (transformers {transformers.__version__}) wrote no {staged}: "
                    "BridgeTrainer._save_checkpoint no longer matches Trainer._save_checkpoint."
                )
            # Trainer creates the staging folders with os.makedirs (umask modes); the weights need fixing, though.
            apply_default_permissions(staged)
            final = os.path.join(run_dir, name)
            replace_directory(staged, final, check=lambda: _check_own_checkpoint(final), kind=CHECKPOINT_KIND)
            shutil.rmtree(staging_root, ignore_errors=True)
            best = self.state.best_model_checkpoint
            if best and best.startswith(staging_root):
                self.state.best_model_checkpoint = os.path.join(run_dir, os.path.relpath(best, staging_root))
            _rotate_own_checkpoints(run_dir, self.args.save_total_limit, self.state.best_model_checkpoint)
        self.accelerator.wait_for_everyone()

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        model = self.model if model is None else model
        if self._needs_from_pretrained_loading(resume_from_checkpoint, model):
            self._load_like_from_pretrained(resume_from_checkpoint, model)
        else:
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_best_model(self):
        if self._needs_from_pretrained_loading(self.state.best_model_checkpoint, self.model):
            self._load_like_from_pretrained(self.state.best_model_checkpoint, self.model)
        else:
            super()._load_best_model()

    def _needs_from_pretrained_loading(self, checkpoint: str, model) -> bool:
        """#43701 applies: a full `PreTrainedModel` checkpoint (not DeepSpeed, FSDP or a PEFT adapter, which take
        Trainer's own path) and a Trainer whose own loading loses ViT weights."""
        return (
            isinstance(model, PreTrainedModel)
            and not self.is_deepspeed_enabled
            and not self.is_fsdp_enabled
            and any(
                os.path.isfile(os.path.join(checkpoint, name))
                for name in (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME, WEIGHTS_INDEX_NAME)
            )
            and not trainer_restores_vit_weights(self)
        )

    @staticmethod
    def _load_like_from_pretrained(checkpoint: str, model) -> None:
        """Restore every parameter and buffer of `model` from `checkpoint` through `from_pretrained`'s key mapping."""
        loaded, info = type(model).from_pretrained(checkpoint, dtype=model.dtype, output_loading_info=True)
        if info.get("missing_keys"):
            raise ValueError(f"{checkpoint} lacks weights of the model being trained: {sorted(info['missing_keys'])}.")
        model.load_state_dict(loaded.state_dict())  # strict


__all__ = [
    "BridgeTrainer",
    "check_private_trainer_api",
    "replace_directory",
    "save_pretrained_atomically",
    "trainer_restores_vit_weights",
]
