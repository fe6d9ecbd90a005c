"""`python -m covlight.export`: the TorchScript file run by torch and the ONNX file run by onnxruntime on CPU give
covlight's own logits and, through the sliding window, its own prediction of a phantom."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from covlight.data.canonical import read_canonical
from covlight.data.options import PREPROCESSING_KEY
from covlight.export import main as export
from covlight.inference import sliding_window_predict
from tests.helpers.runs import TINY_2D, TINY_3D, compose_config


def finished_run(tmp_path, overrides, spacing):
    """A run folder as training leaves it (config.yaml, checkpoints/last.ckpt, status finished), random weights."""
    run = tmp_path / "run"
    cfg = compose_config([*overrides, "subtask=lung_infection", "logger=csv", f"paths.output_dir={run}"])
    config = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k != "hydra"}
    torch.manual_seed(0)
    module = instantiate(cfg.model.module)
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.ndim == 1:
                parameter.add_(torch.randn_like(parameter) * 0.1)
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(OmegaConf.to_yaml(config))
    torch.save({"state_dict": module.state_dict(), "epoch": 1, "global_step": 2,
                PREPROCESSING_KEY: {"target_spacing": spacing, "slice_size": None, "intensity_scaling": "range",
                                    "histogram_landmarks": None}}, run / "checkpoints" / "last.ckpt")
    (run / "status.json").write_text(json.dumps({"state": "finished"}))
    module.eval()
    return run, module


def phantom(phantom_root) -> torch.Tensor:
    """One phantom scan as covlight feeds it (its stored 0..255 scaled to 0..1), (1, x, y, z)."""
    data, _ = read_canonical(phantom_root / "covid19_ct_seg" / "images" / "coronacases_001.nii.gz")
    return torch.from_numpy(np.asarray(data, np.float32) / 255.0)


def exported_network(path, fmt):
    """The exported file as a callable on torch tensors: torch for TorchScript, onnxruntime for ONNX."""
    if fmt == "torchscript":
        return torch.jit.load(str(path))
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is in the export extra")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {"image": x.numpy()})[0])


@pytest.mark.parametrize(("fmt", "overrides", "spacing"), [("onnx", TINY_3D, [1.5, 1.5, 3.0]),
                                                           ("torchscript", TINY_3D, [1.5, 1.5, 3.0]),
                                                           ("onnx", TINY_2D, None)])
def test_the_exported_network_predicts_as_covlight(tmp_path, phantom_root, fmt, overrides, spacing):
    if fmt == "onnx":
        pytest.importorskip("onnx", reason="onnx is in the export extra")
    run, module = finished_run(tmp_path, overrides, spacing)
    out = tmp_path / f"model.{'onnx' if fmt == 'onnx' else 'pt'}"
    assert export(["--run", str(run), "--format", fmt, "--out", str(out)]) == 0
    settings = json.loads(out.with_name(out.name + ".json").read_text())
    assert settings["label_values"] == [0, 1, 2, 3] and settings["spacing_mm"] == spacing
    assert settings["patch_size"] == list(module.patch_size[:module.net_spatial_dims])
    network = exported_network(out, fmt)
    image = phantom(phantom_root)
    dims = module.net_spatial_dims
    window = image[None, :, :32, :32, :16] if dims == 3 else image[:, :, :, 5].unsqueeze(0)[..., :48, :32]
    with torch.no_grad():
        assert (network(window) - module.net(window)).abs().max().item() <= 1e-4
        # a whole volume: the exported file inside covlight's sliding window equals covlight's own prediction
        expected = module.predict_volume(image)
        got = sliding_window_predict(network, image, patch_size=module.patch_size, net_spatial_dims=dims,
                                     **module.inference)
    assert (got - expected).abs().max().item() <= 1e-4
    assert torch.equal(got.argmax(0), expected.argmax(0))


def test_refuses_a_run_without_checkpoint_and_an_existing_file(tmp_path, capsys):
    run, _ = finished_run(tmp_path, TINY_2D, None)
    out = tmp_path / "model.pt"
    out.write_text("mine")
    assert export(["--run", str(run), "--format", "torchscript", "--out", str(out)]) == 2
    assert "model.pt exists; it is replaced only with --force" in capsys.readouterr().err
    assert out.read_text() == "mine"
    (run / "checkpoints" / "last.ckpt").unlink()
    assert export(["--run", str(run), "--format", "torchscript", "--out", str(tmp_path / "new.pt")]) == 2
    err = capsys.readouterr().err
    assert "last.ckpt: no checkpoint, so nothing to export" in err and "python -m covlight.convert" in err
    assert not (tmp_path / "new.pt").exists() and not (tmp_path / "new.pt.json").exists()
