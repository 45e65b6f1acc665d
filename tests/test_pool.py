import pytest
import torch

from ssd_tutorial.data import ImagePool, SyntheticShapes, train_transforms


def test_pool_keeps_the_items_it_was_given():
    shapes = SyntheticShapes(length=5, image_size=32)
    pool = ImagePool(shapes, length=3)
    assert len(pool) == 3
    for i in range(3):
        image, target = pool[i]
        expected_image, expected_target = shapes[i]
        assert torch.equal(image, expected_image)
        assert torch.equal(target["boxes"], expected_target["boxes"])


def test_transforms_run_at_every_read_and_leave_the_kept_item_alone():
    pool = ImagePool(SyntheticShapes(length=2, image_size=64, objects_per_image=(3, 3)))
    kept = pool[0][0].clone()
    augmented = ImagePool.with_transforms(pool, train_transforms(64, zoom_out=False))
    torch.manual_seed(0)
    first = augmented[0][0]
    second = augmented[0][0]
    assert first.shape == (3, 64, 64) and first.dtype == torch.float32
    assert not torch.equal(first, second)  # new random draws every time
    assert torch.equal(pool[0][0], kept)
    assert augmented.items is pool.items  # shared, not copied


@pytest.mark.parametrize("length", [-1, 3])
def test_pool_cannot_be_longer_than_its_dataset(length):
    with pytest.raises(ValueError, match=r"length must be in 0\.\.2"):
        ImagePool(SyntheticShapes(length=2, image_size=16), length=length)
