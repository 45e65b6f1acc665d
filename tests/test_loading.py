from functools import partial
from itertools import islice

import pytest
import torch
from torch.utils.data import DataLoader, RandomSampler, SequentialSampler

from ssd_tutorial import zoo
from ssd_tutorial.data import loading
from ssd_tutorial.data.loading import default_num_workers, make_loader, train_pipeline
from ssd_tutorial.data.pool import ImagePool
from ssd_tutorial.data.shapes import SyntheticShapes
from ssd_tutorial.data.transforms import collate, collate_flipped, train_transforms

#: The pool of the zoo tests: one epoch of images and a few more, drawn at 32 px.
SIZE, POOL = 32, zoo.STEPS_PER_EPOCH * zoo.BATCH_SIZE + 5
NO_PER_IMAGE_STEP = {"photometric": False, "zoom_out": False, "iou_crop": False}


def zoo_loader_written_out(augmentations: dict[str, bool]) -> DataLoader:
    """``zoo.training_loader`` as it was built before the loading policy moved to one place."""
    rendered = zoo._rendered_pool(SIZE, POOL)
    if any(augmentations.get(step, True) for step in ("photometric", "zoom_out", "iou_crop")):
        pool = ImagePool.with_transforms(rendered, train_transforms(SIZE, **augmentations))
        collate_fn = collate
    else:
        pool = ImagePool.with_transforms(rendered, None)
        collate_fn = partial(collate_flipped, p=0.5 if augmentations.get("flip", True) else 0.0)
    sampler = RandomSampler(pool, num_samples=zoo.STEPS_PER_EPOCH * zoo.BATCH_SIZE)
    return DataLoader(pool, batch_size=zoo.BATCH_SIZE, sampler=sampler, collate_fn=collate_fn)


def first_batches(loader: DataLoader, seed: int, count: int = 2) -> list:
    torch.manual_seed(seed)
    return list(islice(iter(loader), count))


@pytest.mark.parametrize(
    "augmentations",
    [NO_PER_IMAGE_STEP, {**NO_PER_IMAGE_STEP, "flip": False}, {}],
    ids=["flips only", "nothing", "all of SSD's"],
)
def test_the_zoo_draws_the_same_batches_as_its_loader_written_out(augmentations):
    ours = first_batches(zoo.training_loader(SIZE, augmentations, pool_images=POOL), seed=3)
    expected = first_batches(zoo_loader_written_out(augmentations), seed=3)
    for batch, reference in zip(ours, expected, strict=True):
        torch.testing.assert_close(batch.images, reference.images, rtol=0, atol=0)
        torch.testing.assert_close(batch.boxes, reference.boxes, rtol=0, atol=0)
        torch.testing.assert_close(batch.labels, reference.labels, rtol=0, atol=0)
    other_seed = first_batches(zoo.training_loader(SIZE, augmentations, pool_images=POOL), seed=4)
    assert not torch.equal(other_seed[0].images, ours[0].images)  # the seed does decide


@pytest.mark.parametrize(
    ("augmentations", "flip_probability"),
    [(NO_PER_IMAGE_STEP, 0.5), ({**NO_PER_IMAGE_STEP, "flip": False}, 0.0)],
)
def test_flips_alone_are_left_to_the_collate_function(augmentations, flip_probability):
    transforms, collate_fn = train_pipeline(64, augmentations)
    assert transforms is None
    assert collate_fn.func is collate_flipped
    assert collate_fn.keywords == {"p": flip_probability}


@pytest.mark.parametrize("augmentations", [None, {}, {"zoom_out": False}, {"flip": False}])
def test_any_per_image_step_keeps_the_per_image_pipeline(augmentations):
    transforms, collate_fn = train_pipeline(64, augmentations)
    assert collate_fn is collate
    image, target = SyntheticShapes(length=1, image_size=96, seed=0)[0]
    torch.manual_seed(0)
    ours = transforms(image, dict(target))
    torch.manual_seed(0)
    reference = train_transforms(64, **(augmentations or {}))(image, dict(target))
    torch.testing.assert_close(ours[0], reference[0], rtol=0, atol=0)
    assert ours[0].shape == (3, 64, 64)


def test_loader_defaults_follow_the_device_and_the_workers(monkeypatch):
    data = list(range(8))
    monkeypatch.setattr(loading, "_available_cpus", lambda: 2)
    on_cpu = make_loader(data, 4)
    assert (on_cpu.num_workers, on_cpu.pin_memory, on_cpu.persistent_workers) == (2, False, True)
    on_gpu = make_loader(data, 4, device="cuda:1", workers=0)
    assert (on_gpu.num_workers, on_gpu.pin_memory, on_gpu.persistent_workers) == (0, True, False)
    chosen = make_loader(data, 4, device="cuda", pin_memory=False, persistent_workers=False)
    assert (chosen.pin_memory, chosen.persistent_workers) == (False, False)
    assert isinstance(make_loader(data, 4, workers=0).sampler, SequentialSampler)
    assert isinstance(make_loader(data, 4, shuffle=True, workers=0).sampler, RandomSampler)
    assert make_loader(data, 4, workers=0).collate_fn is collate


def test_bad_loader_options_are_named():
    with pytest.raises(ValueError, match="the batch size must be >= 1, got 0"):
        make_loader(list(range(4)), 0)
    with pytest.raises(ValueError, match="a sampler or shard=True, not both"):
        make_loader(list(range(4)), 2, sampler=SequentialSampler(range(4)), shard=True)


def test_default_workers_share_the_cores_among_the_processes():
    assert default_num_workers(1, cpu_count=64) == 8
    assert default_num_workers(8, cpu_count=64) == 8
    assert default_num_workers(8, cpu_count=32) == 4
    assert default_num_workers(2, cpu_count=2) == 1
    assert default_num_workers(4, cpu_count=2) == 0  # load in the main process
