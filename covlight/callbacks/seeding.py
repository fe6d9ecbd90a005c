"""Reseed every epoch from (seed, epoch): a run resumed from a checkpoint draws the same patches and
augmentations as an uninterrupted one (Lightning checkpoints do not hold the random generators' states)."""

from __future__ import annotations

import lightning.pytorch as pl


class EpochSeeding(pl.Callback):
    def __init__(self, seed: int):
        self.seed = int(seed)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch_seed = (self.seed * 1_000_003 + trainer.current_epoch * 7_919 + trainer.global_rank) % 2**31
        pl.seed_everything(epoch_seed, workers=True, verbose=False)
