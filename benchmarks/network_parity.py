"""Network parity: covlight's U-Nets against nnU-Net's own `PlainConvUNet` (dynamic-network-architectures), issue 7.

    python benchmarks/network_parity.py [--out FILE] [--rounds N] [--steps N]

Both networks are built with the same stages, features, kernels (3), strides, two convs per stage, conv biases,
instance norm (eps 1e-5, affine), LeakyReLU(0.01) and deep supervision, as `conf/model/unet2d.yaml` and
`unet3d.yaml` describe them (4 classes, lung_infection). Checked in this process: the parameter counts, and, with
covlight's weights copied into nnU-Net's net, the largest difference of every output (the same function, not
only the same size). Timed, each network in its own process: forward + backward of one training step (loss:
the sum of the means of the deep-supervision outputs), 2 warm-up steps then `--steps` timed, median; the processes
alternate covlight, nnU-Net, covlight, ... for `--rounds` rounds and the figure is the median over rounds. Peak
memory: the process's peak RSS (VmHWM, reset after the network and input are built) above its RSS then, with
glibc's mmap threshold fixed (`common.WORKER_ENV`) so RSS follows live tensors rather than heap fragmentation.
Sizes are CPU-moderate: 2D batch 4 at 128x128, 3D batch 1 at 64x64x32 (the default 3D patch is 128x128x64 at
batch 2; the GPU script times that). The bar: nnU-Net / covlight time and memory ratios within 5% of 1.
Needs `pip install --no-deps dynamic-network-architectures` (the `bench` extra; `make bench` installs it).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from common import emit, log, machine_info, median, reset_peak_rss, run_worker, status_mb
from torch import nn

BAR = 0.05
NETWORKS = {
    "2d": {"features": [32, 64, 128, 256, 512, 512], "strides": [1, 2, 2, 2, 2, 2], "input": [4, 1, 128, 128]},
    "3d": {"features": [32, 64, 128, 256, 320, 320],
           "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 1]], "input": [1, 1, 64, 64, 32]},
}
CLASSES = 4


def build(contender: str, name: str) -> nn.Module:
    setting = NETWORKS[name]
    dims = len(setting["input"]) - 2
    torch.manual_seed(0)
    if contender == "covlight":
        from covlight.nets import UNet

        return UNet(dims, 1, CLASSES, setting["features"], setting["strides"], kernel_sizes=3, n_conv_per_stage=2,
                    n_conv_per_stage_decoder=2, norm="instance", negative_slope=0.01, deep_supervision=True)
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    return PlainConvUNet(
        1, len(setting["features"]), setting["features"], nn.Conv2d if dims == 2 else nn.Conv3d, 3,
        setting["strides"], 2, CLASSES, 2, conv_bias=True,
        norm_op=nn.InstanceNorm2d if dims == 2 else nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nn.LeakyReLU, nonlin_kwargs={"negative_slope": 0.01, "inplace": True}, deep_supervision=True)


def copy_weights(ours: nn.Module, theirs: nn.Module) -> None:
    """covlight's parameters into nnU-Net's net, module by matching module (the layouts differ only in names)."""
    n = len(ours.encoder)
    pairs = [(ours.encoder[s], theirs.encoder.stages[s]) for s in range(n)]
    pairs += [(ours.upsample[s], theirs.decoder.transpconvs[s]) for s in range(n - 1)]
    pairs += [(ours.decoder[s], theirs.decoder.stages[s]) for s in range(n - 1)]
    # nnU-Net's seg_layers[s] follows decoder stage s; covlight's head is the last, aux_heads[j] sits at stage j + 1.
    pairs.append((ours.head, theirs.decoder.seg_layers[n - 2]))
    pairs += [(ours.aux_heads[j], theirs.decoder.seg_layers[n - 3 - j]) for j in range(n - 2)]
    with torch.no_grad():
        for mine, other in pairs:
            mine_params, other_params = list(mine.parameters()), list(other.parameters())
            assert [p.shape for p in mine_params] == [p.shape for p in other_params], (mine, other)
            for a, b in zip(mine_params, other_params, strict=True):
                b.copy_(a)


def equivalence(name: str) -> dict:
    ours, theirs = build("covlight", name), build("nnunet", name)
    counts = {"covlight": sum(p.numel() for p in ours.parameters()),
              "nnunet": sum(p.numel() for p in theirs.parameters())}
    copy_weights(ours, theirs)
    x = torch.randn(NETWORKS[name]["input"], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    # nnU-Net returns the deep-supervision outputs highest resolution first, as covlight does.
    difference = max(float((p - q).abs().max()) for p, q in zip(a, b, strict=True))
    return {"parameters": counts, "parameters_equal": counts["covlight"] == counts["nnunet"],
            "outputs": len(a), "max_abs_output_difference_same_weights": difference}


def worker(contender: str, name: str, steps: int) -> dict:
    net = build(contender, name).train()
    x = torch.randn(NETWORKS[name]["input"], generator=torch.Generator().manual_seed(1))
    reset = reset_peak_rss()
    rss_before = status_mb("VmRSS")
    times = []
    for step in range(2 + steps):
        start = time.perf_counter()
        outputs = net(x)
        sum(o.float().mean() for o in outputs).backward()
        net.zero_grad(set_to_none=True)
        if step >= 2:
            times.append(time.perf_counter() - start)
    peak = status_mb("VmHWM")
    return {"step_s": median(times), "steps_s": times, "peak_rss_mb": peak, "rss_before_mb": rss_before,
            "peak_above_start_mb": peak - rss_before if reset else None, "peak_reset": reset}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--worker", choices=("covlight", "nnunet"), help=argparse.SUPPRESS)
    parser.add_argument("--network", choices=tuple(NETWORKS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        import json

        print(json.dumps(worker(args.worker, args.network, args.steps)))
        return
    try:
        import dynamic_network_architectures  # noqa: F401
    except ImportError:
        sys.exit("network_parity needs dynamic-network-architectures: "
                 ".venv/bin/pip install --no-deps dynamic-network-architectures (or make bench)")

    report = {"machine": machine_info(dynamic_network_architectures=_version("dynamic_network_architectures")),
              "method": __doc__.split("\n\n", 1)[1].strip(), "bar_relative": BAR, "networks": {}}
    for name, setting in NETWORKS.items():
        entry = {"input": setting["input"], "features": setting["features"], "strides": setting["strides"]}
        entry.update(equivalence(name))
        runs = {"covlight": [], "nnunet": []}
        for _ in range(args.rounds):
            for contender in runs:
                run = run_worker(__file__, ["--worker", contender, "--network", name, "--steps", str(args.steps)])
                runs[contender].append(run)
                log(f"{name} {contender}: " + (run.get("error") or
                    f"{run['step_s']:.3f} s/step, peak +{run['peak_above_start_mb']:.0f} MB"))
        entry["runs"] = runs
        errors = [r["error"] for rs in runs.values() for r in rs if "error" in r]
        if errors:
            entry["errors"] = errors
        else:
            figures = {c: {"step_s": median(r["step_s"] for r in rs),
                           "peak_above_start_mb": median(r["peak_above_start_mb"] for r in rs),
                           "peak_rss_mb": median(r["peak_rss_mb"] for r in rs)} for c, rs in runs.items()}
            entry["median"] = figures
            time_ratio = figures["covlight"]["step_s"] / figures["nnunet"]["step_s"]
            memory_ratio = figures["covlight"]["peak_above_start_mb"] / figures["nnunet"]["peak_above_start_mb"]
            entry["covlight_over_nnunet"] = {"time": time_ratio, "peak_memory": memory_ratio}
            entry["bar_met"] = {"parameters": entry["parameters_equal"], "time": abs(time_ratio - 1) <= BAR,
                                "memory": abs(memory_ratio - 1) <= BAR}
        report["networks"][name] = entry
    emit(report, args.out)


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package.replace("_", "-"))


if __name__ == "__main__":
    main()
