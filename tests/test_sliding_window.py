import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from covlight.inference import gaussian_importance_map, sliding_window_predict, sliding_window_steps
from covlight.nets import UNet
from tests.helpers.runs import compose_config


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def local_conv_net():
    """A small-receptive-field 3D net: windows agree with the whole image except near their borders."""
    return nn.Sequential(
        nn.Conv3d(1, 8, 3, padding=1), nn.LeakyReLU(0.01), nn.Conv3d(8, 4, 3, padding=1)
    ).eval()


def argmax_dice(a: torch.Tensor, b: torch.Tensor) -> float:
    """Worst per-class Dice between the argmax maps of two probability volumes (K, ...)."""
    a, b = a.argmax(0), b.argmax(0)
    return min(
        (2 * ((a == k) & (b == k)).sum() / ((a == k).sum() + (b == k).sum())).item()
        for k in torch.unique(torch.cat([a.flatten(), b.flatten()]))
    )


def test_steps_follow_nnunet():
    assert sliding_window_steps([100, 64, 7], [64, 64, 1], 0.5) == [[0, 18, 36], [0], list(range(7))]
    assert sliding_window_steps([128], [64], 0.5) == [[0, 32, 64]]
    assert sliding_window_steps([129], [64], 0.0) == [[0, 32, 65]]
    with pytest.raises(ValueError, match="smaller than the patch"):
        sliding_window_steps([10], [16], 0.5)


def test_gaussian_importance_map():
    g = gaussian_importance_map((6, 5, 1))
    assert g.shape == (6, 5, 1) and g.dtype == torch.float32
    assert g.max() == 1 and g.min() > 0
    torch.testing.assert_close(g, g.flip(0, 1))  # centred: mirror-symmetric
    assert g[0, 2, 0] < g[2, 2, 0]


def test_output_shape_dtype_device_and_probabilities():
    net = nn.Conv3d(2, 3, 1).double()
    image = torch.randn(2, 20, 11, 9, dtype=torch.float64)
    probs = sliding_window_predict(net, image, (8, 8, 8))
    assert probs.shape == (3, 20, 11, 9) and probs.dtype == torch.float32 and probs.device == image.device
    torch.testing.assert_close(probs.sum(0), torch.ones(20, 11, 9))


def test_pointwise_net_equals_whole_image():
    net = nn.Conv3d(2, 3, 1)
    image = torch.randn(2, 21, 17, 9)
    probs = sliding_window_predict(net, image, (8, 8, 4), overlap=0.3, batch_size=3)
    with torch.no_grad():
        expected = net(image[None])[0].softmax(0)
    torch.testing.assert_close(probs, expected)


def test_local_net_close_to_whole_image():
    # Gaussian blending keeps the window-border artefacts of a conv net with zero padding small.
    net = local_conv_net()
    image = torch.randn(1, 30, 32, 26)
    with torch.no_grad():
        expected = net(image[None])[0].softmax(0)
    assert (sliding_window_predict(net, image, (16, 16, 16)) - expected).abs().max() < 5e-3


def test_equals_monai_when_windows_coincide():
    monai = pytest.importorskip("monai.inferers")
    net = UNet(3, 1, 4, [4, 8, 16], [1, 2, 2]).eval()
    image = torch.randn(1, 32, 32, 24)
    # With these sizes both place windows at 0, 8, 16 (0, 8 along z); sigma 0.5 keeps MONAI's weight floor
    # of 1e-3 inactive, so both blend with the same (scaled) weights.
    probs = sliding_window_predict(net, image, (16, 16, 16), gaussian_sigma_scale=0.5)
    with torch.no_grad():
        logits = monai.sliding_window_inference(
            image[None], (16, 16, 16), 1, net, overlap=0.5, mode="gaussian", sigma_scale=0.5
        )
    torch.testing.assert_close(probs, logits[0].softmax(0), rtol=0, atol=1e-5)


def test_agrees_with_monai_with_other_window_placement():
    # MONAI starts windows every int(patch * (1 - overlap)) and pushes the last one back inside; nnU-Net
    # spreads them evenly. Given the same weight map (MONAI's own floors weights at 1e-3, which in 3D flattens
    # the blending near the corners of windows), the argmax maps agree.
    monai = pytest.importorskip("monai.inferers")
    net = local_conv_net()
    image = torch.randn(1, 30, 32, 26)
    probs = sliding_window_predict(net, image, (16, 16, 16))
    with torch.no_grad():
        logits = monai.sliding_window_inference(
            image[None],
            (16, 16, 16),
            1,
            net,
            overlap=0.5,
            roi_weight_map=gaussian_importance_map((16, 16, 16)),
        )
    assert argmax_dice(probs, logits[0].softmax(0)) >= 0.99


def test_mirroring_a_flip_equivariant_net_changes_nothing():
    net = nn.Conv3d(1, 3, 3, padding=1)
    with torch.no_grad():
        net.weight.copy_((net.weight + net.weight.flip(2) + net.weight.flip(4) + net.weight.flip(2, 4)) / 4)
    image = torch.randn(1, 20, 12, 18)
    plain = sliding_window_predict(net, image, (8, 8, 8))
    mirrored = sliding_window_predict(net, image, (8, 8, 8), mirror_axes=(0, 2))
    torch.testing.assert_close(mirrored, plain)


def test_mirroring_averages_over_all_flips():
    # For a linear net, averaging flip(net(flip(x))) over all flips equals the net with the averaged kernel.
    net = nn.Conv3d(1, 3, 3, padding=1)
    symmetric = nn.Conv3d(1, 3, 3, padding=1)
    with torch.no_grad():
        w = net.weight
        symmetric.weight.copy_((w + w.flip(3) + w.flip(4) + w.flip(3, 4)) / 4)
        symmetric.bias.copy_(net.bias)
    image = torch.randn(1, 12, 20, 18)
    mirrored = sliding_window_predict(net, image, (8, 8, 8), mirror_axes=(1, 2), batch_size=4)
    torch.testing.assert_close(mirrored, sliding_window_predict(symmetric, image, (8, 8, 8)))
    assert not torch.allclose(mirrored, sliding_window_predict(net, image, (8, 8, 8)))


def test_volume_smaller_than_patch_is_padded_with_its_minimum():
    seen = []

    def net(x):
        seen.append(x.clone())
        return torch.cat([x, -x], dim=1)

    image = torch.rand(1, 5, 20, 6) + 3
    probs = sliding_window_predict(net, image, (8, 8, 8))
    assert probs.shape == (2, 5, 20, 6)
    torch.testing.assert_close(probs, torch.cat([image, -image]).softmax(0))
    first = seen[0][0, 0]
    assert torch.equal(first[:1], torch.full_like(first[:1], image.min().item()))  # 3 voxels padded before x


def test_2d_net_on_3d_volume_runs_slice_by_slice():
    calls = []
    net2d = nn.Conv2d(2, 3, 3, padding=1)

    def net(x):
        assert x.ndim == 4
        calls.append(x.shape[0])
        return net2d(x)

    image = torch.randn(2, 12, 10, 5)
    probs = sliding_window_predict(
        net, image, (12, 10, 1), net_spatial_dims=2, batch_size=2, mirror_axes=(2,)
    )
    with torch.no_grad():
        expected = net2d(image.permute(3, 0, 1, 2)).softmax(1).permute(1, 2, 3, 0)
    torch.testing.assert_close(probs, expected)
    assert calls == [2, 2, 1]  # 5 slices, 2 at a time; mirroring along z is a no-op and skipped


def test_2d_pointwise_net_tiles_in_plane():
    net = nn.Conv2d(1, 2, 1)
    image = torch.randn(1, 20, 17, 3)
    probs = sliding_window_predict(
        net, image, (8, 8, 1), net_spatial_dims=2, batch_size=5, mirror_axes=(0, 1)
    )
    with torch.no_grad():
        expected = net(image.permute(3, 0, 1, 2)).softmax(1).permute(1, 2, 3, 0)
    torch.testing.assert_close(probs, expected)


def test_deep_supervision_net_in_training_mode_uses_full_resolution():
    net = UNet(3, 1, 2, [4, 8], [1, 2], deep_supervision=True).train()
    image = torch.randn(1, 8, 8, 8)
    probs = sliding_window_predict(net, image, (8, 8, 8))
    with torch.no_grad():
        torch.testing.assert_close(probs, net(image[None])[0][0].softmax(0))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"patch_size": (8, 8)}, "spatial axes"),
        ({"overlap": 1.0}, "overlap"),
        ({"mirror_axes": (3,)}, "mirror_axes"),
        ({"mirror_axes": (0, 0)}, "mirror_axes"),
        ({"net_spatial_dims": 2}, "net_spatial_dims"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_argument_errors(kwargs, match):
    args = {"net": nn.Conv3d(1, 2, 1), "image": torch.randn(1, 8, 8, 8), "patch_size": (8, 8, 8), **kwargs}
    with pytest.raises(ValueError, match=match):
        sliding_window_predict(**args)


def test_net_with_wrong_output_shape():
    with pytest.raises(ValueError, match="expected"):
        sliding_window_predict(nn.Conv3d(1, 2, 3), torch.randn(1, 8, 8, 8), (8, 8, 8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_stays_on_the_image_device():
    net = UNet(3, 1, 3, [4, 8, 16], [1, 2, 2]).eval().cuda()
    image = torch.randn(1, 20, 24, 16, device="cuda")
    probs = sliding_window_predict(net, image, (16, 16, 16), mirror_axes=(0, 1, 2), batch_size=4)
    assert probs.device == image.device and probs.dtype == torch.float32 and probs.shape == (3, 20, 24, 16)
    cpu = sliding_window_predict(net.cpu(), image.cpu(), (16, 16, 16), mirror_axes=(0, 1, 2), batch_size=4)
    torch.testing.assert_close(probs.cpu(), cpu, rtol=0, atol=1e-2)  # TF32 convs on GPU


def test_the_configured_settings_reach_the_sliding_window():
    """model.module.inference's keys (the Gaussian's sigma among them) are what the module's prediction uses."""
    cfg = compose_config(["model=unet2d", "model.patch_size=[16,16,1]", "model.module.net.features_per_stage=[4,8]",
                          "model.module.net.strides=[1,2]", "model.module.inference.gaussian_sigma_scale=0.5",
                          "model.module.inference.overlap=0.25", "model.module.inference.mirror_axes=[0]"])
    module = instantiate(cfg.model.module).eval()
    image = torch.rand(1, 40, 24, 2)
    settings = dict(net_spatial_dims=2, overlap=0.25, mirror_axes=(0,), batch_size=8)
    expected = sliding_window_predict(module.net, image, (16, 16, 1), gaussian_sigma_scale=0.5, **settings)
    assert torch.equal(module.predict_volume(image), expected)
    default = sliding_window_predict(module.net, image, (16, 16, 1), gaussian_sigma_scale=0.125, **settings)
    assert not torch.allclose(expected, default)
