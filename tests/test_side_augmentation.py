"""90-degree rotations and mirrors: image and label turn together; refused where they would swap lung sides."""

import pytest
import torch
import torchio as tio

from covlight.config import check_combination
from covlight.data.options import Augmentation
from covlight.data.transforms import RandomRot90, Rot90, augmentation_preset
from covlight.errors import ConfigError
from tests.helpers.runs import compose_config


def subject(shape=(8, 8, 1)) -> tio.Subject:
    image = torch.arange(float(torch.tensor(shape).prod())).reshape(1, *shape)
    label = (image > image.median()).to(torch.uint8)
    return tio.Subject(image=tio.ScalarImage(tensor=image), label=tio.LabelMap(tensor=label))


def test_a_quarter_turn_moves_image_and_label_together():
    case = subject()
    turned = Rot90(1)(case)
    assert torch.equal(turned.image.data, torch.rot90(case.image.data, 1, dims=(1, 2)))
    assert torch.equal(turned.label.data, torch.rot90(case.label.data, 1, dims=(1, 2)))
    assert not torch.equal(turned.image.data, case.image.data)


def test_random_quarter_turns_draw_every_turn_and_keep_labels_aligned():
    case = subject()
    seen = set()
    torch.manual_seed(0)
    for _ in range(40):
        turned = RandomRot90(p=1.0)(case)
        quarters = next(k for k in range(1, 4) if torch.equal(
            turned.image.data, torch.rot90(case.image.data, k, dims=(1, 2))))
        assert torch.equal(turned.label.data, torch.rot90(case.label.data, quarters, dims=(1, 2)))
        seen.add(quarters)
    assert seen == {1, 2, 3}


def test_the_preset_turns_patches_when_asked_and_refuses_non_square_patches():
    options = Augmentation(affine_probability=0, gamma_probability=0, noise_probability=0, blur_probability=0,
                           low_resolution_probability=0, rot90_probability=1.0)
    torch.manual_seed(1)
    turned = augmentation_preset(2, options, (8, 8, 1))(subject())
    assert not torch.equal(turned.image.data, subject().image.data)
    with pytest.raises(ConfigError, match="square"):
        augmentation_preset(2, options, (8, 6, 1))(subject((8, 6, 1)))


@pytest.mark.parametrize("override", ["data.augmentation.flip_axes=[0]", "data.augmentation.rot90_probability=0.5",
                                      "model.module.inference.mirror_axes=[0,1]"])
def test_side_swapping_augmentation_is_refused_for_lungs_and_allowed_for_infection(override):
    with pytest.raises(ConfigError, match="left and right lung"):
        check_combination(compose_config(["subtask=lung", "model=unet2d", override]))
    check_combination(compose_config(["subtask=infection", "model=unet2d", override]))


def test_mirrors_that_keep_the_sides_are_allowed_for_lungs():
    check_combination(compose_config(["subtask=lung", "model=unet2d", "data.augmentation.flip_axes=[1]",
                                      "model.module.inference.mirror_axes=[1]"]))
