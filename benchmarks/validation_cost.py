"""Validation's share of an epoch at the default settings (issue 19, part 2).

    python benchmarks/validation_cost.py [--out FILE] [--steps N]

For each default model (`model=unet2d`: slice sets and 2D training, `model=unet3d`: volumes) the network, loss and
optimizer that covlight composes are timed on random batches of the model's patch and batch size: a training step
(forward, loss with deep supervision, backward, optimizer step) and a validation step (the forward pass in eval
mode without gradients, as `validation_step`); the median over `--steps` steps after one warm-up step. Validation's
share of an epoch is then val / (val + train) with train = `data.sampling.batches_per_epoch` training steps and val
= ceil(`data.validation.patches` / batch size) validation steps (the validation patches are drawn once per run, not
per epoch). The same share is given for the former rule, 4 patches per case, for a slice set of 510 training slices
and for 4 volumes. Loading is left out of both (training's own loader runs in parallel workers), so the share is
that of the compute.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
import warnings

from common import emit, log, machine_info

FORMER = {"unet2d": ("a slice set of 510 slices", 510 * 4), "unet3d": ("4 training volumes", 4 * 4)}


def step_times(model: str, steps: int) -> dict:
    import torch
    from hydra.utils import instantiate

    from tests.helpers.runs import compose_config

    cfg = compose_config(["task=task1", "subtask=lung_infection", f"model={model}", "paths.data_dir=unused"])
    torch.manual_seed(0)
    module = instantiate(cfg.model.module)
    optimizer = module.optimizer_factory(module.parameters())
    batch = int(cfg.data.batch_size)
    shape = [int(n) for n in cfg.data.patch_size]
    image = module.net_input(torch.rand(batch, 1, *shape))
    target = module.net_input(torch.randint(0, len(cfg.data.label_values), (batch, 1, *shape)))[:, 0]
    train, val = [], []
    for _ in range(steps + 1):
        module.train()
        start = time.perf_counter()
        optimizer.zero_grad()
        module.supervised_loss(module.net(image), target).backward()
        optimizer.step()
        train.append(time.perf_counter() - start)
        module.eval()
        start = time.perf_counter()
        with torch.no_grad():
            module.net(image)
        val.append(time.perf_counter() - start)
    train_s, val_s = statistics.median(train[1:]), statistics.median(val[1:])
    batches = int(cfg.data.sampling.batches_per_epoch)
    val_batches = math.ceil(int(cfg.data.validation.patches) / batch)
    what, former_patches = FORMER[model]
    former_batches = math.ceil(former_patches / batch)
    share = lambda n: n * val_s / (n * val_s + batches * train_s)  # noqa: E731
    return {"patch_size": shape, "batch_size": batch, "train_step_s": train_s, "val_step_s": val_s,
            "batches_per_epoch": batches, "validation_patches": int(cfg.data.validation.patches),
            "validation_share": share(val_batches), "former_rule": what, "former_validation_patches": former_patches,
            "former_validation_share": share(former_batches)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    report = {"machine": machine_info(), "method": __doc__.split("\n\n", 1)[1].strip(), "models": {}}
    for model in ("unet2d", "unet3d"):
        figures = step_times(model, args.steps)
        report["models"][model] = figures
        log(f"{model}: train step {figures['train_step_s']:.2f} s, validation step {figures['val_step_s']:.2f} s; "
            f"validation {100 * figures['validation_share']:.1f}% of an epoch ({figures['validation_patches']} "
            f"patches; {figures['former_rule']} at 4 per case: "
            f"{100 * figures['former_validation_share']:.1f}%)")
    emit(report, args.out)


if __name__ == "__main__":
    main()
