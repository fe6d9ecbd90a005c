"""The GPU path as far as a CPU allows: trainer=gpu composes with bf16, channels-last and torch.compile knobs;
channels-last changes the memory layout and not the numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from tests.helpers.runs import compose_config

KNOBS = ["model.module.channels_last=true", "model.module.compile={mode: max-autotune}"]


@pytest.mark.parametrize("model", ["unet2d", "unet3d"])
@pytest.mark.parametrize("trainer", ["gpu", "ddp"])
def test_gpu_trainers_compose_with_bf16_channels_last_and_compile(model, trainer):
    cfg = compose_config([f"trainer={trainer}", f"model={model}", *KNOBS, "paths.output_dir=unused"])
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "bf16-mixed"
    module = instantiate(cfg.model.module)
    assert module.channels_last and module.compile_options == {"mode": "max-autotune"}
    expected = torch.channels_last if model == "unet2d" else torch.channels_last_3d
    assert module.memory_format == expected


def test_knobs_default_off():
    cfg = compose_config(["paths.output_dir=unused"])
    assert cfg.model.module.channels_last is False and cfg.model.module.compile is False
    module = instantiate(cfg.model.module)
    module.configure_model()
    assert module.compile_options is None and module.memory_format == torch.contiguous_format


def _tiny(**knobs):
    cfg = compose_config(["model=unet3d", "model.patch_size=[16,16,8]", "model.module.net.features_per_stage=[4,8]",
                          "model.module.net.strides=[1,2]", "paths.output_dir=unused"])
    torch.manual_seed(0)
    return instantiate(cfg.model.module, **knobs)


def test_channels_last_same_loss_and_gradients():
    batch = {"image": torch.rand(2, 1, 16, 16, 8), "label": torch.randint(0, 3, (2, 1, 16, 16, 8))}
    results = []
    for channels_last in (False, True):
        module = _tiny(channels_last=channels_last)
        module.configure_model()
        weight = module.net.encoder[1][0].weight  # (8, 4, 3, 3, 3): the first conv (1 input channel) is both
        assert weight.is_contiguous(memory_format=torch.channels_last_3d) == channels_last
        image, target = module.batch_tensors(batch)
        # A one-channel input (and the first conv's weights) are contiguous in both layouts, and instance norm
        # returns a contiguous tensor: a conv with channels-last weights still computes channels-last.
        features = module.net.encoder[1][0](module.net.encoder[0](image))
        assert features.is_contiguous(memory_format=torch.channels_last_3d) == channels_last
        loss = module.supervised_loss(module.net(image), target)
        loss.backward()
        results.append((loss.detach(), weight.grad.clone()))
        probabilities = module.predict_volume(torch.rand(1, 20, 18, 9))
        assert probabilities.shape == (3, 20, 18, 9)
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-4, atol=1e-6)


def test_compile_knob_compiles_the_network_in_place_keeping_checkpoint_keys():
    module = _tiny(compile=True)
    keys = set(module.state_dict())
    module.configure_model()
    module.configure_model()  # Lightning may call it again (fit, then test): configured once
    assert module.net._compiled_call_impl is not None
    assert set(module.state_dict()) == keys


def test_foreground_voxels_match_a_nonzero_per_class():
    from covlight.data.sampling import foreground_voxels

    torch.manual_seed(0)
    label = torch.randint(0, 4, (1, 9, 7, 5), dtype=torch.uint8) * (torch.rand(1, 9, 7, 5) < 0.5)
    label[label == 2] = 0  # a class absent from the case is not listed
    expected = [torch.nonzero(label[0] == c) for c in torch.unique(label).tolist() if c != 0]
    found = foreground_voxels(label[0])
    assert len(found) == len(expected) == 2
    for flat, voxels in zip(found, expected, strict=True):
        assert np.array_equal(np.stack(np.unravel_index(flat.numpy(), label.shape[1:]), 1), voxels.numpy())
    assert foreground_voxels(torch.zeros(3, 3, 3, dtype=torch.uint8)) == []
