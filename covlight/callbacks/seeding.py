"""Every epoch draws from (seed, epoch), so a run resumed from a checkpoint trains on the same patches and
augmentations, with the same random numbers in its training steps, as an uninterrupted one (Lightning checkpoints do
not hold the random generators' states)."""

from __future__ import annotations

import lightning.pytorch as pl

from covlight.data.datamodule import epoch_to_resume


class EpochSeeding(pl.Callback):
    """Tells the data module's patch streams the epoch's number (they draw from their own seeded generators), and
    reseeds the process's generators for the training steps once the epoch's first batch is there: only then,
    because Lightning creates the loader iterator (which draws from the process's generator) before the epoch
    starts in a resumed run and after it in an uninterrupted one."""

    def __init__(self, seed: int):
        self.seed = int(seed)
        self._reseeded_epoch: int | None = None

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        """A resumed run: the data module learns its first epoch before Lightning builds the training loader
        (`estimated_stepping_batches` builds it, and its workers start drawing, before the loops are restored and
        before any epoch-start hook)."""
        datamodule = trainer.datamodule
        if datamodule is not None and hasattr(datamodule, "set_epoch") and "loops" in checkpoint:
            datamodule.set_epoch(epoch_to_resume(checkpoint))

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        datamodule = trainer.datamodule
        if datamodule is not None and hasattr(datamodule, "set_epoch"):
            datamodule.set_epoch(trainer.current_epoch)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        if self._reseeded_epoch == trainer.current_epoch:
            return
        self._reseeded_epoch = trainer.current_epoch
        epoch_seed = (self.seed * 1_000_003 + trainer.current_epoch * 7_919 + trainer.global_rank) % 2**31
        pl.seed_everything(epoch_seed, workers=True, verbose=False)
