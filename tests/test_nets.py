import pytest
import torch

from covlight.nets import UNet, min_input_multiple


def small_unet(spatial_dims=3, **kwargs):
    args = dict(
        spatial_dims=spatial_dims,
        in_channels=1,
        num_classes=4,
        features_per_stage=[4, 8, 16],
        strides=[1, 2, 2],
    )
    return UNet(**{**args, **kwargs})


@pytest.mark.parametrize("spatial_dims, size", [(2, (32, 24)), (3, (16, 8, 12))])
def test_forward_shape(spatial_dims, size):
    net = small_unet(spatial_dims, in_channels=2)
    out = net(torch.randn(2, 2, *size))
    assert out.shape == (2, 4, *size)
    assert out.dtype == torch.float32


def test_deep_supervision_list_in_training_tensor_in_eval():
    net = small_unet(3, features_per_stage=[4, 8, 16, 16], strides=[1, 2, 2, 2], deep_supervision=True)
    x = torch.randn(1, 1, 16, 16, 16)
    outputs = net.train()(x)
    assert [tuple(o.shape) for o in outputs] == [(1, 4, 16, 16, 16), (1, 4, 8, 8, 8), (1, 4, 4, 4, 4)]
    assert isinstance(net.eval()(x), torch.Tensor)
    torch.testing.assert_close(net(x), outputs[0])  # eval mode, instance norm: same full-resolution output


def test_anisotropic_strides_and_kernels():
    net = small_unet(
        3, strides=[1, [2, 2, 1], [2, 2, 2]], kernel_sizes=[[3, 3, 1], 3, 3], deep_supervision=True
    )
    assert net.min_input_multiple() == (4, 4, 2)
    assert min_input_multiple([1, [2, 2, 1], [2, 2, 2]], 3) == (4, 4, 2)
    assert net.encoder[0][0].kernel_size == (3, 3, 1)
    outputs = net(torch.randn(1, 1, 16, 12, 6))
    assert [tuple(o.shape[2:]) for o in outputs] == [(16, 12, 6), (8, 6, 6)]


def test_gradients_reach_every_parameter():
    net = small_unet(2, deep_supervision=True, dropout=0.2, norm="batch")
    loss = sum(o.square().mean() for o in net(torch.randn(2, 1, 16, 16)))
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_encode_decode_round_trip_equals_forward():
    torch.manual_seed(0)
    net = small_unet(3).eval()
    x = torch.randn(1, 1, 8, 8, 8)
    skips = net.encode(x)
    assert [tuple(s.shape) for s in skips] == [(1, 4, 8, 8, 8), (1, 8, 4, 4, 4), (1, 16, 2, 2, 2)]
    torch.testing.assert_close(net.decode(skips), net(x), rtol=0, atol=0)


def test_channel_dropout_only_in_training():
    net = small_unet(2, dropout=0.5)
    assert any(isinstance(m, torch.nn.Dropout2d) for m in net.modules())
    x = torch.randn(1, 1, 16, 16)
    net.eval()
    torch.testing.assert_close(net(x), net(x))
    net.train()
    assert not torch.equal(net(x), net(x))


def test_reference_parameter_count_is_stable():
    # nnU-Net's 2D plan for 4 classes; the count equals dynamic_network_architectures' PlainConvUNet
    # (0.4.4) with deep supervision, conv biases and affine instance norm.
    net = UNet(2, 1, 4, [32, 64, 128, 256, 320], [1, 2, 2, 2, 2], deep_supervision=True)
    assert sum(p.numel() for p in net.parameters()) == 5_689_488
    # Without deep supervision only the full-resolution head remains: 3 heads of (c + 1) * 4 weights fewer.
    net = UNet(2, 1, 4, [32, 64, 128, 256, 320], [1, 2, 2, 2, 2])
    assert sum(p.numel() for p in net.parameters()) == 5_689_488 - 4 * (65 + 129 + 257)


def test_he_initialisation():
    net = small_unet(3)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv3d)]
    assert all(torch.count_nonzero(c.bias) == 0 for c in convs)
    assert all(c.weight.std() > 0 for c in convs)


def test_builds_from_hydra_style_lists():
    omegaconf = pytest.importorskip("omegaconf")
    cfg = omegaconf.OmegaConf.create(
        {"features_per_stage": [4, 8, 16], "strides": [1, [1, 2, 2], 2], "kernel_sizes": [[1, 3, 3], 3, 3]}
    )
    net = UNet(3, 1, 2, cfg.features_per_stage, cfg.strides, cfg.kernel_sizes)
    assert net.min_input_multiple() == (2, 4, 4)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"spatial_dims": 4}, "spatial_dims"),
        ({"features_per_stage": [4]}, "features_per_stage"),
        ({"strides": [1, 2]}, "strides has 2 entries"),
        ({"strides": [2, 2, 2]}, r"strides\[0\] must be 1"),
        ({"strides": [1, [2, 2], 2]}, r"strides\[1\]"),
        ({"kernel_sizes": [3, 3]}, "kernel_sizes has 2 entries"),
        ({"kernel_sizes": 2}, "odd"),
        ({"n_conv_per_stage": [2, 2]}, "n_conv_per_stage has 2"),
        ({"n_conv_per_stage_decoder": [2, 2, 2]}, "n_conv_per_stage_decoder has 3"),
        ({"n_conv_per_stage": 0}, ">= 1"),
        ({"norm": "group"}, "norm"),
        ({"dropout": 1.0}, "dropout"),
        ({"num_classes": 0}, "num_classes"),
    ],
)
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        small_unet(**kwargs)


def test_input_size_not_multiple_of_strides():
    with pytest.raises(ValueError, match=r"multiple of \(4, 4, 4\)"):
        small_unet(3)(torch.randn(1, 1, 8, 8, 6))
    with pytest.raises(ValueError, match="spatial"):
        small_unet(3)(torch.randn(1, 8, 8, 8))
