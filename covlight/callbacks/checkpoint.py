"""`last.ckpt` after every training epoch (and every N steps if asked), written so that a kill never loses it.

Lightning's ModelCheckpoint with `save_top_k=0` writes `last.ckpt` only when a top-k checkpoint was written at the
same step, so a run killed mid-training had nothing to resume from; and Lightning writes a checkpoint in place,
so a kill or a full disk during the write leaves a truncated file. Here the checkpoint goes to a temporary file in
the same folder, is flushed to disk, and only then renamed over the previous one: at every moment `last.ckpt` is
either the previous good checkpoint or the new one, whole.
"""

from __future__ import annotations

import os
from pathlib import Path

import lightning.pytorch as pl

from covlight.errors import ConfigError, disk_full

LAST = "last.ckpt"


def fsync_path(path: Path) -> None:
    """Flush a file's (or a folder's) data to disk."""
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


class LastCheckpoint(pl.Callback):
    """Writes `<dirpath>/last.ckpt` at the end of every training epoch and, with `every_n_train_steps` > 0, every
    that many optimizer steps. A checkpoint written at an epoch's end resumes bitwise (the patch streams are seeded
    per epoch); one written mid-epoch resumes at its step, with that epoch's remaining batches drawn afresh."""

    def __init__(self, dirpath: str | Path, every_n_train_steps: int = 0):
        if int(every_n_train_steps) < 0:
            raise ConfigError(f"callbacks.model_checkpoint.every_n_train_steps={every_n_train_steps}: give 0 (epoch ends only) or a positive number")
        self.dirpath = Path(dirpath)
        self.every_n_train_steps = int(every_n_train_steps)
        self._saved_step: int | None = None

    @property
    def path(self) -> Path:
        return self.dirpath / LAST

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """A write killed half-way left its temporary file; the checkpoint it was replacing is still whole."""
        if trainer.is_global_zero:
            for stale in self.dirpath.glob(f".partial-*-{LAST}"):
                stale.unlink(missing_ok=True)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.every_n_train_steps and trainer.global_step % self.every_n_train_steps == 0:
            self.save(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.save(trainer)

    def save(self, trainer: pl.Trainer) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run or trainer.global_step == self._saved_step:
            return
        temporary = self.dirpath / f".partial-{os.getpid()}-{LAST}"
        if trainer.is_global_zero:
            self.dirpath.mkdir(parents=True, exist_ok=True)
        try:
            # the full state (optimizer, loops, callbacks) for resume; saying so keeps Lightning quiet every epoch
            trainer.save_checkpoint(temporary, weights_only=False)  # rank 0 writes; every rank waits for it
            if trainer.is_global_zero:
                fsync_path(temporary)
                os.replace(temporary, self.path)
                fsync_path(self.dirpath)
        except BaseException as error:
            if trainer.is_global_zero:
                temporary.unlink(missing_ok=True)
            full = disk_full(error, self.path)  # a full disk: one line naming last.ckpt
            if full is not None:
                raise full from None
            raise
        self._saved_step = trainer.global_step



def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint file's contents (plain containers only: weights_only); a damaged file or one that is not a
    checkpoint is one clear error naming the file and the fix, never a reader's traceback."""
    import torch

    path = Path(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # torch's zip reader, the unpickler and the OS each raise their own kinds
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(
            f"{path} is damaged or not a checkpoint ({reason}). Delete it to restart that run from its first epoch, "
            "or give another checkpoint (ckpt_path=...), or start a new run (drop resume=auto)") from None
    if not isinstance(checkpoint, dict):
        raise ConfigError(f"{path} holds a {type(checkpoint).__name__}, not a checkpoint: give the last.ckpt of a "
                          "covlight run folder")
    return checkpoint


def checkpoint_position(path: str | Path) -> tuple[int, int]:
    """The (epoch, global step) a training checkpoint was written at."""
    checkpoint = load_checkpoint(path)
    if not {"state_dict", "epoch", "global_step"} <= set(checkpoint):
        raise ConfigError(f"{path} is not a training checkpoint (no state_dict, epoch and global_step): give the "
                          "last.ckpt of a covlight run folder")
    return int(checkpoint["epoch"]), int(checkpoint["global_step"])
