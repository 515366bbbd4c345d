"""Trainer integration: per-component loss logging and crash-safe saving."""

import os
import shutil
import tempfile
from collections import defaultdict

import torch
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

LOSS_COMPONENTS = ("itc_loss", "unimodal_itc_loss", "cross_itc_loss", "itm_loss", "mlm_loss", "mim_loss", "cycle_loss")


def replace_directory(staging_dir: str, final_dir: str) -> None:
    """Move a fully written `staging_dir` to `final_dir`. An existing `final_dir` is moved aside first and deleted
    only after the new one is in place, so at every moment one complete copy exists under a known name."""
    final_dir = os.path.abspath(final_dir)
    backup = None
    if os.path.exists(final_dir):
        backup = tempfile.mkdtemp(prefix=f".{os.path.basename(final_dir)}.old-", dir=os.path.dirname(final_dir))
        os.rmdir(backup)
        os.replace(final_dir, backup)
    os.replace(staging_dir, final_dir)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def save_pretrained_atomically(output_dir: str, *objects) -> None:
    """`save_pretrained` every object (model, processor, ...) into a temporary sibling of `output_dir`, then rename
    it into place: an interrupted save leaves the previous `output_dir` (or nothing), never a half-written one."""
    parent = os.path.dirname(os.path.abspath(output_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(output_dir))}.tmp-", dir=parent)
    try:
        for obj in objects:
            obj.save_pretrained(staging)
        replace_directory(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


class BridgeTrainer(Trainer):
    """`Trainer` that logs every loss component of `BridgeForPreTraining` (averaged over the logging window, as
    Trainer does for `loss`) and writes each checkpoint to a staging folder renamed into place when complete, so a
    run killed mid-save never leaves a checkpoint that `resume_from_checkpoint` would pick up half-written."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._component_sums = defaultdict(float)
        self._component_counts = defaultdict(int)

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

    def _save_checkpoint(self, model, trial):
        run_dir = self._get_output_dir(trial=trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging_root = os.path.join(run_dir, f".staging-{name}")
        get_output_dir = self._get_output_dir
        self._get_output_dir = lambda trial=None: staging_root  # Trainer writes everything under this root
        save_total_limit, self.args.save_total_limit = self.args.save_total_limit, None
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._get_output_dir = get_output_dir
            self.args.save_total_limit = save_total_limit
        self.accelerator.wait_for_everyone()  # every rank has written its RNG state
        if self.args.should_save:
            replace_directory(os.path.join(staging_root, name), os.path.join(run_dir, name))
            shutil.rmtree(staging_root, ignore_errors=True)
            best = self.state.best_model_checkpoint
            if best and best.startswith(staging_root):
                self.state.best_model_checkpoint = os.path.join(run_dir, os.path.relpath(best, staging_root))
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )
        self.accelerator.wait_for_everyone()


__all__ = ["BridgeTrainer", "replace_directory", "save_pretrained_atomically"]
