"""Framework overhead: a covlight training step (Lightning) against a plain torch loop, issue 7.

    python benchmarks/framework_overhead.py [--out FILE] [--rounds N] [--steps N] [--warmup N]

The config is covlight's own, composed as `python -m covlight` composes it: task1, subtask lung_infection,
model=unet2d (its network, SGD with Nesterov momentum, poly LR, Dice + CE with deep supervision), trainer=cpu
(gradient clipping at 12, logging every 10 steps), logger=csv, the default callbacks (checkpointing, progress
bar, epoch seeding, case scoring), with the patch and batch made small enough for a 2D step of 50-100 ms on a
CPU, where a fixed per-step overhead would show: patch 64x64, batch 2.

The batches are the same for both: drawn once by covlight's real data module (PatchStream with the default
augmentation, over phantom volumes) and saved; each contender feeds them through a DataLoader in the main process,
so loader workers compete with neither. Each contender runs in its own process:
- covlight: `SupervisedSegmentation`, callbacks, CSV logger and `lightning.Trainer` built from the config
  (`trainer.fit` with the data module whose training loader serves the saved batches; validation off);
- plain: the same network (same seed), optimizer, scheduler, loss and clipping, in a `for` loop.
A step is the time between the ends of consecutive training steps (loading, forward, backward, clipping,
optimizer and scheduler steps, and, for covlight, its hooks, logging and progress bar). The first `--warmup`
steps are left out; a run's figure is its median step. The processes alternate for `--rounds` rounds and the
figure is the median over rounds. The bar: covlight / plain - 1 <= 5%.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

from common import emit, log, machine_info, median, run_worker

BAR = 0.05
OVERRIDES = ["task=task1", "subtask=lung_infection", "fold=0", "model=unet2d", "trainer=cpu", "logger=csv",
             "model.patch_size=[64,64,1]", "model.batch_size=2", "data.sampling.num_workers=0", "data.cases.missing=skip",
             "print_config=false"]
PHANTOM_CASES = ["coronacases_008", "coronacases_007", "radiopaedia_36_86526_0", "radiopaedia_4_85506_1"]


def compose(data_dir: Path, output_dir: Path, extra: list[str] = ()):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from covlight.config import conf_dir

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=[*OVERRIDES, f"paths.data_dir={data_dir}",
                                                              f"paths.output_dir={output_dir}", *extra])


def prepare_batches(folder: Path, count: int) -> Path:
    """Phantom volumes, and `count` training batches drawn from them by covlight's data module."""
    import torch
    from hydra.utils import instantiate

    from covlight.data.synthetic import write_phantom_dataset

    data = folder / "data"
    write_phantom_dataset(data / "covid19_ct_seg", cases=PHANTOM_CASES, size="demo", progress=False)
    cfg = compose(data, folder / "draw", ["data.sampling.num_workers=2"])
    torch.manual_seed(0)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    datamodule.batches_per_epoch = count
    batches = [{"image": b["image"].clone(), "label": b["label"].clone()} for b in datamodule.train_dataloader()]
    path = folder / "batches.pt"
    torch.save(batches, path)
    return path


class SavedBatches:
    """The saved batches as a map-style dataset of whole batches (DataLoader with batch_size=None)."""

    def __init__(self, path: str):
        import torch

        self.batches = torch.load(path, weights_only=True)

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> dict:
        return self.batches[index]


def run_covlight(folder: Path, batches_path: str) -> list[float]:
    import lightning.pytorch as pl
    from hydra.utils import instantiate
    from torch.utils.data import DataLoader

    cfg = compose(folder / "data", folder / f"run-{time.time_ns()}",
                  ["trainer.max_epochs=1", "+trainer.limit_val_batches=0"])
    pl.seed_everything(0, verbose=False)
    datamodule = instantiate(cfg.data)
    saved = DataLoader(SavedBatches(batches_path), batch_size=None, shuffle=False, num_workers=0)
    datamodule.train_dataloader = lambda: saved
    module = instantiate(cfg.model.module)
    times: list[float] = []

    class StepClock(pl.Callback):
        def on_train_batch_end(self, *args) -> None:
            times.append(time.perf_counter())

    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None] + [StepClock()]
    loggers = [instantiate(c) for c in cfg.logger.values() if c is not None]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    times.append(time.perf_counter())
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == len(saved), (trainer.global_step, len(saved))
    return times


def run_plain(folder: Path, batches_path: str) -> list[float]:
    import lightning.pytorch as pl
    import torch
    from hydra.utils import instantiate
    from torch.utils.data import DataLoader

    from covlight.methods.losses import deep_supervision_loss

    cfg = compose(folder / "data", folder / "plain")
    pl.seed_everything(0, verbose=False)
    net = instantiate(cfg.model.module.net)
    loss_fn = instantiate(cfg.model.module.loss)
    optimizer = instantiate(cfg.model.module.optimizer)(net.parameters())
    saved = DataLoader(SavedBatches(batches_path), batch_size=None, shuffle=False, num_workers=0)
    scheduler = instantiate(cfg.model.module.scheduler)(optimizer, total_iters=len(saved))
    clip = float(cfg.trainer.gradient_clip_val)
    net.train()
    times = [time.perf_counter()]
    for batch in saved:
        image = batch["image"].float()[..., 0]
        target = batch["label"][:, 0].long()[..., 0]
        loss = deep_supervision_loss(loss_fn, net(image), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
        optimizer.step()
        scheduler.step()
        times.append(time.perf_counter())
    return times


def worker(contender: str, folder: Path, batches_path: str, warmup: int) -> dict:
    warnings.simplefilter("ignore")
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    ends = (run_covlight if contender == "covlight" else run_plain)(folder, batches_path)
    steps = [b - a for a, b in zip(ends, ends[1:], strict=False)]
    timed = steps[warmup:]
    return {"steps": len(steps), "median_step_s": median(timed), "mean_step_s": sum(timed) / len(timed),
            "step_s": timed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=60, help="steps per run, warm-up included")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--worker", choices=("covlight", "plain"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--batches", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, Path(args.folder), args.batches, args.warmup)))
        return

    report = {"machine": machine_info(), "method": __doc__.split("\n\n", 1)[1].strip(), "overrides": OVERRIDES,
              "steps_per_run": args.steps, "warmup_steps": args.warmup, "bar_overhead": BAR}
    with tempfile.TemporaryDirectory(prefix="covlight-bench-") as name:
        folder = Path(name)
        batches = prepare_batches(folder, args.steps)
        runs = {"covlight": [], "plain": []}
        for _ in range(args.rounds):
            for contender in runs:
                run = run_worker(__file__, ["--worker", contender, "--folder", str(folder), "--batches",
                                            str(batches), "--warmup", str(args.warmup)])
                runs[contender].append(run)
                log(f"{contender}: " + (run.get("error") or f"median {1000 * run['median_step_s']:.1f} ms/step"))
    report["runs"] = runs
    errors = [r["error"] for rs in runs.values() for r in rs if "error" in r]
    if errors:
        report["errors"] = errors
    else:
        figures = {c: {"median_step_ms": 1000 * median(r["median_step_s"] for r in rs),
                       "mean_step_ms": 1000 * median(r["mean_step_s"] for r in rs)} for c, rs in runs.items()}
        overhead = figures["covlight"]["median_step_ms"] / figures["plain"]["median_step_ms"] - 1
        report.update(median=figures, overhead=overhead,
                      overhead_ms=figures["covlight"]["median_step_ms"] - figures["plain"]["median_step_ms"],
                      bar_met=overhead <= BAR)
    emit(report, args.out)


if __name__ == "__main__":
    main()
