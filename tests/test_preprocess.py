import pytest
import torch

from ssd_tutorial.preprocess import IMAGENET_MEAN, IMAGENET_STD, denormalize, preprocess


def test_uint8_and_float_inputs_agree():
    image = torch.randint(0, 256, (2, 3, 40, 60), dtype=torch.uint8)
    a = preprocess(image, 32)
    b = preprocess(image.float() / 255, 32)
    assert a.shape == (2, 3, 32, 32) and a.dtype == torch.float32
    torch.testing.assert_close(a, b)


def test_constant_mean_image_normalises_to_zero():
    image = torch.tensor(IMAGENET_MEAN).view(3, 1, 1).expand(3, 10, 10)
    torch.testing.assert_close(preprocess(image, 10), torch.zeros(1, 3, 10, 10))


def test_denormalize_inverts_preprocess():
    image = torch.rand(1, 3, 16, 16)
    torch.testing.assert_close(denormalize(preprocess(image, 16)), image)


def test_statistics_are_imagenet():
    assert IMAGENET_STD == (0.229, 0.224, 0.225)


@pytest.mark.parametrize(
    ("shape", "message"),
    [((1, 1, 8, 8), "RGB"), ((8, 8), "RGB"), ((0, 3, 8, 8), "empty"), ((1, 3, 0, 8), "empty")],
)
def test_bad_images_are_rejected(shape, message):
    with pytest.raises(ValueError, match=message):
        preprocess(torch.zeros(shape), 8)
