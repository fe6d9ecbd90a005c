"""`python -m covlight.export --run RUN --format torchscript|onnx --out FILE`: a run's network for use outside
covlight (3D Slicer, an inference server, ONNX Runtime), with the preprocessing it needs in `FILE.json`.

The exported graph is the network alone: input (N, 1, *patch) float32, the scan in RAS+ axes (x, y[, z]), scaled as
the JSON says; output the logits (N, K, *patch), class k being canonical label `label_values[k]`. Resampling to
the model's spacing, the sliding window (Gaussian-weighted, overlap 0.5) and the argmax stay outside it: the
README shows the lines that predict a volume with the exported file. Sizes other than the patch work when each is
a multiple of `input_multiple`.

Nothing is written over an existing FILE (or FILE.json) without --force; the JSON is written after the model, so a
model with its JSON beside it is whole. Exit status 0, or 2 with one line naming the file and the fix.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import torch

from covlight.atomic import replacing, write_json
from covlight.benchmark import STRUCTURE_OF_VALUE
from covlight.errors import ConfigError, CovlightError, report_error

FORMATS = ("torchscript", "onnx")
ONNX_OPSET = 17
WINDOW_HU = (-1250.0, 250.0)  # covlight's stored 0..255 window (docs/ARCHITECTURE.md)
# How the scan reaches spacing_mm and the probabilities return (data.preprocessing.resampling of the run)
RESAMPLING_RULES = {
    "linear": "images linearly, probabilities back trilinearly (half-voxel aligned corners)",
    "nnunet_v1": "nnU-Net v1's: images with third-order splines and the probabilities back linearly, except along "
                 "the coarsest axis when spacing max/min > 3 (of the scan, else of spacing_mm): there slice by slice "
                 "in-plane, then order 0 across slices",
}


def load(run: Path):
    """The run's model on CPU, in eval mode, as covlight.predict loads it."""
    from covlight.predict import load_model, run_files

    checkpoint = run / "checkpoints" / "last.ckpt"
    if not checkpoint.is_file():
        raise ConfigError(f"{checkpoint}: no checkpoint, so nothing to export; give a finished run folder (training "
                          "writes checkpoints/last.ckpt) or convert a model into one (python -m covlight.convert)")
    options = argparse.Namespace(run=[run], runs=[], ckpt=None, config=None, device="cpu", mirror=False)
    (config, checkpoint, source), = run_files(options)
    return load_model(options, config, checkpoint, source)


def settings(model, fmt: str, run: Path) -> dict:
    """What a user of the exported file needs to feed it and read its output."""
    module = model.module
    if model.histogram_landmarks is not None:
        raise ConfigError(f"{run} was trained with histogram standardisation, which the export does not describe; "
                          "export a run trained with data.preprocessing.intensity_scaling=range or zscore")
    dims = module.net_spatial_dims
    low, high = WINDOW_HU
    if model.intensity_scaling == "range":
        rule = (f"HU clipped to [{low:g}, {high:g}], then (HU - ({low:g})) / {high - low:g}: 0..1 (covlight's stored "
                "0..255 window divided by 255)")
    else:
        rule = (f"HU clipped to [{low:g}, {high:g}] and scaled to 0..255, then z-scored per image: (x - mean(x)) / "
                "std(x)")
    multiple = getattr(module.net, "min_input_multiple", None)
    return {
        "format": fmt,
        "run": str(run),
        "input": {"shape": f"(N, 1, {'x, y, z' if dims == 3 else 'x, y'}) float32",
                  "axes": "RAS+ as nibabel.as_closest_canonical gives: x increases towards the patient's right, "
                          "y anterior, z superior",
                  "intensity": rule, "intensity_scaling": model.intensity_scaling,
                  "input_multiple": list(multiple()) if multiple else None},
        "spacing_mm": list(model.target_spacing) if model.target_spacing else None,
        "resampling": RESAMPLING_RULES[model.resampling],
        "slice_size": list(model.slice_size) if model.slice_size else None,
        "patch_size": list(module.patch_size[:dims]),
        "label_values": list(module.label_values),
        "structures": [STRUCTURE_OF_VALUE[v] for v in module.label_values],
        "output": "logits (N, K, *input spatial); softmax over K, argmax class k is label_values[k]",
        "sliding_window": {k: module.inference.get(k) for k in ("overlap", "gaussian_sigma_scale")},
        "outside_the_graph": ["reorientation to RAS+", "intensity window and scaling", "resampling to spacing_mm",
                              "sliding window", "softmax and argmax", "resampling back to the scan's grid"],
    }


def example_input(model) -> torch.Tensor:
    """One patch of the model's input, the traced and exported shape."""
    module = model.module
    dims = module.net_spatial_dims
    return torch.rand(1, 1, *module.patch_size[:dims], generator=torch.Generator().manual_seed(0))


def export(run: Path, fmt: str, out: Path, force: bool = False) -> dict:
    """Write the run's network to `out` in `fmt` and its settings to `out`.json; return the settings."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt}: use one of {', '.join(FORMATS)}")
    sidecar = Path(f"{out}.json")
    for path in (out, sidecar):
        if path.exists() and not force:
            raise ConfigError(f"{path} exists; it is replaced only with --force")
    model = load(run)
    described = settings(model, fmt, run)
    net = model.module.net.eval()
    example = example_input(model)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on Python-side shape checks (they hold for any size)
        if fmt == "torchscript":
            traced = torch.jit.trace(net, example, check_trace=False)
            with replacing(out) as temporary:
                torch.jit.save(traced, str(temporary))
        else:
            spatial = {i + 2: f"size{i}" for i in range(example.ndim - 2)}
            with replacing(out) as temporary:
                torch.onnx.export(net, (example,), str(temporary), dynamo=False, opset_version=ONNX_OPSET,
                                  input_names=["image"], output_names=["logits"],
                                  dynamic_axes={"image": {0: "batch", **spatial}, "logits": {0: "batch", **spatial}})
    write_json(sidecar, described)
    return described


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m covlight.export",
                                     description="Export a run's network (TorchScript or ONNX) with its preprocessing "
                                                 "settings.")
    parser.add_argument("--run", type=Path, required=True, help="a finished run folder")
    parser.add_argument("--format", choices=FORMATS, required=True)
    parser.add_argument("--out", type=Path, required=True, help="the file to write (its settings go to FILE.json)")
    parser.add_argument("--force", action="store_true", help="replace FILE and FILE.json if they exist")
    args = parser.parse_args(argv)
    try:
        export(args.run, args.format, args.out, args.force)
    except CovlightError as error:
        return report_error("covlight.export", error)
    print(f"wrote {args.out} and {args.out}.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
