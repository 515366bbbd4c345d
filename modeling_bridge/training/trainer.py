"""Trainer integration: per-component loss logging and crash-safe saving (checkpoints with the usual permissions)."""

import os
import shutil
from collections import defaultdict

import torch
from transformers import PreTrainedModel, Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, WEIGHTS_INDEX_NAME, WEIGHTS_NAME

from ..saving import apply_default_permissions, replace_directory, save_pretrained_atomically

LOSS_COMPONENTS = ("itc_loss", "unimodal_itc_loss", "cross_itc_loss", "itm_loss", "mlm_loss", "mim_loss", "cycle_loss")


class _BatchSeededCollator:
    """Calls `collator` with torch's generator seeded from (seed, rank, batch index), restoring the global state after:
    batch i gets the same random masks whenever it is built, before or after a resume."""

    def __init__(self, collator, seed: int, rank: int):
        self.collator, self.seed, self.rank = collator, seed, rank
        self.next_index, self.batches_per_epoch = 0, 0

    def __call__(self, rows):
        seed = (self.seed * 1_000_003 + self.rank) * 1_000_003 + self.next_index
        self.next_index += 1
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed % 2**63)
            return self.collator(rows)


class BridgeTrainer(Trainer):
    """`Trainer` that logs every loss component of `BridgeForPreTraining` (averaged over the logging window, as
    Trainer does for `loss`) and writes each checkpoint to a staging folder renamed into place when complete, so a
    run killed mid-save never leaves a checkpoint that `resume_from_checkpoint` would pick up half-written."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.args.label_names is None:
            # Trainer would take forward's `mlm_labels` for the label column and, with MLM off, drop `eval_loss`.
            self.args.label_names = []
            self.label_names = []
        self._component_sums = defaultdict(float)
        self._component_counts = defaultdict(int)
        self._train_collator, self._sync_batch_index = None, False

    # Collator randomness (BridgeDataCollator's MLM/MIM masks draw from torch's global generator) and exact resume:
    # accelerate's dataloader collates one batch ahead, so the uninterrupted run built batch k+1 before step k's
    # forward pass, while the checkpoint of step k holds the generator state after it; a run resumed mid-epoch could
    # not rebuild batch k+1's masks and drifted from the uninterrupted run. Each training batch is therefore collated
    # under its own seed, a function of (args.seed, rank, batch index in the run), with the global generator left
    # untouched; Trainer's checkpointed RNG state then covers the rest (dropout, negative sampling) exactly.
    def get_train_dataloader(self):
        collator = self.data_collator
        if self.args.dataloader_num_workers > 0 or isinstance(self.train_dataset, torch.utils.data.IterableDataset):
            return super().get_train_dataloader()  # worker processes / streams: Trainer's own seeding applies
        self.data_collator = self._train_collator = _BatchSeededCollator(collator, self.args.seed,
                                                                          self.args.process_index)
        try:
            dataloader = super().get_train_dataloader()
        finally:
            self.data_collator = collator
        self._train_collator.batches_per_epoch = len(dataloader)
        return dataloader

    def train(self, *args, **kwargs):
        self._sync_batch_index = True
        return super().train(*args, **kwargs)

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        if self._sync_batch_index and self._train_collator is not None:  # the first fetch of this train() call
            self._sync_batch_index = False
            per_epoch = max(1, -(-self._train_collator.batches_per_epoch // self.args.gradient_accumulation_steps))
            epochs, steps = divmod(self.state.global_step, per_epoch)
            skipped = 0 if self.args.ignore_data_skip else steps * self.args.gradient_accumulation_steps
            self._train_collator.next_index = epochs * self._train_collator.batches_per_epoch + skipped
        return super().get_batch_samples(epoch_iterator, num_batches, device)

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

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        if not self._load_weights_like_from_pretrained(resume_from_checkpoint, self.model if model is None else model):
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_best_model(self):
        if not self._load_weights_like_from_pretrained(self.state.best_model_checkpoint, self.model):
            super()._load_best_model()

    def _load_weights_like_from_pretrained(self, checkpoint: str, model) -> bool:
        """Restore `model`'s weights from a checkpoint folder the way `from_pretrained` reads them.

        Trainer's own path (transformers 5.x) calls `model.load_state_dict(file, strict=False)` on the raw file, but
        `save_pretrained` writes some towers' weights under their legacy names (ViT and DINOv2 blocks: `encoder.layer.
        N.attention.attention.query` for `layers.N.attention.q_proj`), and only `from_pretrained` maps them back. The
        raw load skipped those weights with a warning, so a resumed run silently continued from the initial vision
        blocks (transformers issue #43701). Returns False where Trainer's own path applies (DeepSpeed, FSDP, PEFT)."""
        if (
            not isinstance(model, PreTrainedModel) or self.is_deepspeed_enabled or self.is_fsdp_enabled
            or not any(os.path.isfile(os.path.join(checkpoint, name))
                       for name in (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME, WEIGHTS_INDEX_NAME))
        ):
            return False
        loaded, info = type(model).from_pretrained(checkpoint, dtype=model.dtype, output_loading_info=True)
        if info.get("missing_keys"):
            raise ValueError(f"{checkpoint} lacks weights of the model being trained: {sorted(info['missing_keys'])}.")
        model.load_state_dict(loaded.state_dict())  # strict: every parameter and buffer is restored
        return True

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
            # Trainer creates the staging folders with os.makedirs (umask modes); the weights need fixing, though.
            apply_default_permissions(os.path.join(staging_root, name))
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
