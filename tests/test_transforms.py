import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import DataLoader
from torchvision import tv_tensors
from torchvision.transforms import v2

from ssd_tutorial.data.shapes import CLASS_NAMES, SyntheticShapes
from ssd_tutorial.data.transforms import (
    MEAN_FILL,
    Batch,
    BatchedIoUCrop,
    collate,
    collate_flipped,
    drop_crowd,
    eval_transforms,
    relative_boxes,
    train_transforms,
)
from ssd_tutorial.preprocess import preprocess

ALL_OFF = {"photometric": False, "zoom_out": False, "iou_crop": False, "flip": False}


def make_sample(boxes, height, width, labels=None, seed=0, **fields):
    """A random image with the given pixel boxes, a position map and a per-pixel label map.

    ``target["position"][y, x] = y * width + x + 1`` (0 where zoom-out filled the canvas) tells
    where each output pixel came from; ``target["label_map"]`` holds the label of the last box
    covering each pixel. Both are Masks, so the geometric transforms move them with the boxes.
    """
    generator = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    labels = torch.arange(1, len(boxes) + 1) if labels is None else torch.tensor(labels)
    label_map = torch.zeros(height, width, dtype=torch.int64)
    for (x1, y1, x2, y2), label in zip(boxes.int().tolist(), labels.tolist()):
        label_map[y1:y2, x1:x2] = label
    target = {
        "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width)),
        "labels": labels,
        "position": tv_tensors.Mask(torch.arange(1, height * width + 1).view(height, width)),
        "label_map": tv_tensors.Mask(label_map),
        **fields,
    }
    return tv_tensors.Image(image), target


def grid_boxes(generator, height, width, cells=4):
    """Non-overlapping integer boxes, one in each cell of a ``cells x cells`` grid."""
    boxes = []
    cell_h, cell_w = height // cells, width // cells
    for row in range(cells):
        for col in range(cells):
            x1, y1 = (
                col * cell_w + int(torch.randint(0, 3, (1,), generator=generator)),
                row * cell_h + 1,
            )
            w = int(torch.randint(4, cell_w - 3, (1,), generator=generator))
            h = int(torch.randint(4, cell_h - 2, (1,), generator=generator))
            boxes.append([x1, y1, x1 + w, y1 + h])
    return boxes


def run_until(pipeline, sample, stop):
    """Apply the steps of ``pipeline`` one by one, up to and including the first ``stop(step)``."""
    for step in pipeline.transforms:
        sample = step(*sample)
        if stop(step):
            return sample
    raise AssertionError("no such step")


def window(position, input_width):
    """The crop window ``(x0, y0, width, height)`` in the input image, from a position map."""
    first = int(position[0, 0]) - 1
    return first % input_width, first // input_width, position.shape[1], position.shape[0]


def check_boxes_valid(target, canvas, positive, slack=0.0):
    boxes = target["boxes"]
    assert isinstance(boxes, tv_tensors.BoundingBoxes) and boxes.canvas_size == canvas
    height, width = canvas[0] + slack, canvas[1] + slack
    assert (
        (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
    )
    assert (boxes[:, 2:] >= boxes[:, :2]).all()
    if positive:
        assert (boxes[:, 2:] - boxes[:, :2] >= 1).all()
    assert len(target["labels"]) == len(boxes)
    if "masks" in target:
        assert len(target["masks"]) == len(boxes)


def test_mean_fill_is_the_imagenet_mean_in_uint8():
    assert MEAN_FILL == (124, 116, 104)


def test_each_step_can_be_switched_off():
    def kinds(**flags):
        return [type(step) for step in train_transforms(300, **flags).transforms]

    everything = kinds()
    for kind in (
        v2.RandomPhotometricDistort,
        v2.RandomZoomOut,
        BatchedIoUCrop,
        v2.RandomHorizontalFlip,
    ):
        assert kind in everything
    assert v2.RandomPhotometricDistort not in kinds(photometric=False)
    assert v2.RandomZoomOut not in kinds(zoom_out=False)
    assert BatchedIoUCrop not in kinds(iou_crop=False)
    assert v2.RandomHorizontalFlip not in kinds(flip=False)
    assert kinds(**ALL_OFF) == [type(step) for step in train_transforms(300, **ALL_OFF).transforms]
    assert BatchedIoUCrop not in [type(step) for step in eval_transforms(300).transforms]


@pytest.mark.parametrize(
    "flags",
    [{}, {"photometric": True}, {"zoom_out": True}, {"iou_crop": True}, {"flip": True}],
    ids=["none", "photometric", "zoom_out", "iou_crop", "flip"],
)
def test_boxes_stay_valid_and_inside_the_image_after_every_step(flags):
    pipeline = train_transforms(96, **{**ALL_OFF, **flags}) if flags else train_transforms(96)
    dataset = SyntheticShapes(10, image_size=(90, 120), seed=2, return_masks=True)
    torch.manual_seed(0)
    for index in range(len(dataset)):
        image, target = dataset[index]
        for step in pipeline.transforms[:-1]:
            image, target = step(image, target)
            # Resize's float rounding is undone by the ClampBoundingBoxes that follows it.
            slack = 1e-3 if isinstance(step, v2.Resize) else 0.0
            check_boxes_valid(target, image.shape[-2:], positive=False, slack=slack)
        check_boxes_valid(target, (96, 96), positive=True)  # after the last sanitising
        image, target = pipeline.transforms[-1](image, target)
        boxes = target["boxes"]
        assert type(boxes) is torch.Tensor and boxes.dtype == torch.float32
        assert ((boxes >= 0) & (boxes <= 1)).all() and (boxes[:, 2:] > boxes[:, :2]).all()
        assert image.shape == (3, 96, 96) and image.dtype == torch.float32
        labels = target["labels"]
        assert labels.dtype == torch.int64 and ((labels >= 1) & (labels < len(CLASS_NAMES))).all()


def test_labels_follow_their_boxes_through_the_whole_pipeline():
    pipeline = train_transforms(128)
    generator = torch.Generator().manual_seed(0)
    checked = 0
    for seed in range(20):
        image, target = make_sample(grid_boxes(generator, 120, 160), 120, 160, seed=seed)
        torch.manual_seed(seed)
        _, out = pipeline(image, target)
        label_map = out["label_map"]
        for box, label in zip(out["boxes"], out["labels"]):
            # Rectangles stay rectangles: each box is the region its own label marks.
            rows, cols = (label_map == label).any(dim=1), (label_map == label).any(dim=0)
            region = torch.tensor(
                [
                    cols.nonzero().min(),
                    rows.nonzero().min(),
                    cols.nonzero().max() + 1,
                    rows.nonzero().max() + 1,
                ]
            )
            torch.testing.assert_close(box * 128, region.float(), atol=1.01, rtol=0)
            checked += 1
    assert checked > 80


def test_iou_crop_keeps_exactly_the_boxes_whose_centre_is_inside_the_patch():
    pipeline = train_transforms(64, **{**ALL_OFF, "iou_crop": True})
    generator = torch.Generator().manual_seed(1)
    cropped = removed = 0
    for seed in range(40):
        boxes = torch.tensor(grid_boxes(generator, 120, 160, cells=5), dtype=torch.float32)
        sample = make_sample(boxes, 120, 160, seed=seed)
        torch.manual_seed(seed)
        sanitised = 0

        def after_crop_and_sanitise(step):
            nonlocal sanitised
            sanitised += isinstance(step, v2.SanitizeBoundingBoxes)
            return sanitised == 1

        _, out = run_until(pipeline, sample, after_crop_and_sanitise)
        x0, y0, width, height = window(out["position"], 160)
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        inside = (
            (centres[:, 0] > x0)
            & (centres[:, 0] < x0 + width)
            & (centres[:, 1] > y0)
            & (centres[:, 1] < y0 + height)
        )
        shifted = boxes[inside] - torch.tensor([x0, y0, x0, y0])
        expected = torch.stack(
            (
                shifted[:, 0].clamp(0, width),
                shifted[:, 1].clamp(0, height),
                shifted[:, 2].clamp(0, width),
                shifted[:, 3].clamp(0, height),
            ),
            dim=1,
        )
        torch.testing.assert_close(out["boxes"].as_subclass(torch.Tensor), expected)
        assert out["labels"].tolist() == (inside.nonzero().flatten() + 1).tolist()
        cropped += (width, height) != (160, 120)
        removed += int((~inside).sum())
    assert cropped > 10 and removed > 0


@pytest.mark.parametrize(
    "crop", [v2.RandomIoUCrop(), BatchedIoUCrop()], ids=["torchvision", "ours"]
)
def test_iou_crop_alone_only_marks_lost_boxes_so_sanitising_is_needed(crop):
    image, target = make_sample(grid_boxes(torch.Generator().manual_seed(2), 120, 120), 120, 120)
    marked = 0
    for seed in range(30):
        torch.manual_seed(seed)
        _, out = crop(image, target)
        assert len(out["boxes"]) == len(out["labels"]) == 16  # nothing removed
        marked += int((out["boxes"] == 0).all(dim=1).sum())  # lost boxes become (0, 0, 0, 0)
    assert marked > 0


def test_batched_iou_crop_draws_patches_like_torchvisions():
    image, target = make_sample(
        [[40, 30, 120, 100], [150, 120, 190, 150], [10, 10, 20, 20]], 160, 200
    )
    statistics = {}
    for name, crop in (("ours", BatchedIoUCrop()), ("torchvision", v2.RandomIoUCrop())):
        torch.manual_seed(0)
        areas, kept, whole = [], [], 0
        for _ in range(300):
            out_image, out = crop(image, target)
            areas.append(out_image.shape[-1] * out_image.shape[-2] / (160 * 200))
            kept.append(int((out["boxes"] != 0).any(dim=1).sum()))
            whole += out_image.shape[-2:] == (160, 200)
        statistics[name] = (sum(areas) / 300, sum(kept) / 300, whole / 300)
    ours, theirs = statistics["ours"], statistics["torchvision"]
    # Means of 300 draws: standard errors about 0.015 (area), 0.05 (boxes kept), 0.02 (whole).
    assert abs(ours[0] - theirs[0]) < 0.06
    assert abs(ours[1] - theirs[1]) < 0.2
    assert abs(ours[2] - theirs[2]) < 0.08


def test_zoom_out_fills_the_canvas_with_the_mean_and_moves_boxes_with_the_image():
    pipeline = train_transforms(64, **{**ALL_OFF, "zoom_out": True})
    boxes = [[10, 20, 50, 40], [0, 0, 80, 60]]
    zoomed = 0
    for seed in range(20):
        torch.manual_seed(seed)
        image, out = run_until(
            pipeline, make_sample(boxes, 60, 80), lambda s: isinstance(s, v2.RandomZoomOut)
        )
        position = out["position"]
        fill = position == 0
        if not fill.any():
            continue
        zoomed += 1
        assert (image[:, fill] == torch.tensor(MEAN_FILL, dtype=torch.uint8).view(3, 1)).all()
        rows, cols = (~fill).any(dim=1).nonzero(), (~fill).any(dim=0).nonzero()
        x0, y0 = int(cols.min()), int(rows.min())
        expected = torch.tensor(boxes, dtype=torch.float32) + torch.tensor([x0, y0, x0, y0])
        torch.testing.assert_close(out["boxes"].as_subclass(torch.Tensor), expected)
        assert image.shape[-1] / 80 <= 4
    assert zoomed >= 5


def test_zoomed_out_canvas_normalises_to_about_zero():
    pipeline = train_transforms(64, **{**ALL_OFF, "zoom_out": True})
    image, target = make_sample([[0, 0, 8, 8]], 16, 16)
    for seed in range(10):
        torch.manual_seed(seed)
        out, _ = pipeline(image, target)
        corner = out[:, -1, -1] if out[:, -1, -1].abs().max() < 0.05 else out[:, 0, 0]
        if corner.abs().max() < 0.05:
            return
    raise AssertionError("no zoomed-out image with a mean-filled corner in 10 tries")


def test_flip_mirrors_image_and_boxes_by_hand():
    image, target = make_sample([[6, 4, 18, 20], [30, 10, 60, 40]], 40, 60)
    flip = train_transforms(30, **{**ALL_OFF, "flip": True})
    reference, reference_target = eval_transforms(30)(image, target)
    torch.testing.assert_close(reference_target["boxes"][0], torch.tensor([0.1, 0.1, 0.3, 0.5]))
    mirrored = torch.tensor([[0.7, 0.1, 0.9, 0.5], [0.0, 0.25, 0.5, 1.0]])
    outcomes = set()
    for seed in range(12):
        torch.manual_seed(seed)
        out, out_target = flip(image, target)
        if torch.allclose(out_target["boxes"], reference_target["boxes"]):
            torch.testing.assert_close(out, reference)
            outcomes.add("kept")
        else:
            torch.testing.assert_close(out_target["boxes"], mirrored)
            torch.testing.assert_close(out, reference.flip(-1), atol=0.02, rtol=0)
            outcomes.add("flipped")
        assert out_target["labels"].tolist() == [1, 2]
    assert outcomes == {"kept", "flipped"}


def test_photometric_distortion_changes_pixels_not_boxes():
    image, target = make_sample([[6, 4, 18, 20]], 40, 60)
    reference, reference_target = eval_transforms(30)(image, target)
    pipeline = train_transforms(30, **{**ALL_OFF, "photometric": True})
    changed = 0
    for seed in range(5):
        torch.manual_seed(seed)
        out, out_target = pipeline(image, target)
        torch.testing.assert_close(out_target["boxes"], reference_target["boxes"])
        changed += not torch.allclose(out, reference)
    assert changed > 0


def test_eval_transforms_resize_and_normalise_like_preprocess():
    image, target = make_sample([[20, 10, 100, 50]], 100, 200)
    out, out_target = eval_transforms(64)(image, target)
    torch.testing.assert_close(
        out, preprocess(image.as_subclass(torch.Tensor), 64)[0], atol=0.03, rtol=0
    )
    torch.testing.assert_close(out_target["boxes"], torch.tensor([[0.1, 0.1, 0.5, 0.5]]))


@pytest.mark.parametrize("pipeline", [train_transforms(96, **ALL_OFF), eval_transforms(96)])
def test_boxes_touching_the_border_survive_resizing(pipeline):
    # In float32, 90 * (96 / 90) is a hair above 96: without clamping the box would be dropped.
    image, target = make_sample([[0, 0, 120, 90], [10, 10, 20, 20]], 90, 120)
    _, out = pipeline(image, target)
    assert out["labels"].tolist() == [1, 2]
    assert out["boxes"][0].tolist() == [0, 0, 1, 1]


def test_eval_transforms_keep_every_box():
    image, target = make_sample([[0, 0, 1, 1], [5, 5, 5.5, 5.2]], 300, 300)
    _, out = eval_transforms(30)(image, target)
    assert len(out["boxes"]) == 2


def test_same_seed_gives_the_same_augmentation():
    pipeline = train_transforms(64)
    dataset = SyntheticShapes(6, 96, seed=4)
    outputs = []
    for _ in range(2):
        torch.manual_seed(123)
        outputs.append([pipeline(*dataset[i]) for i in range(len(dataset))])
    for (image_a, target_a), (image_b, target_b) in zip(*outputs):
        assert torch.equal(image_a, image_b) and torch.equal(target_a["boxes"], target_b["boxes"])
    torch.manual_seed(321)
    other = [pipeline(*dataset[i]) for i in range(len(dataset))]
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(outputs[0], other))


def test_image_without_boxes_passes_the_training_pipeline():
    image, target = make_sample([], 50, 70)
    for seed in range(5):
        torch.manual_seed(seed)
        out, out_target = train_transforms(32)(image, target)
        assert out.shape == (3, 32, 32)
        assert out_target["boxes"].shape == (0, 4) and out_target["labels"].shape == (0,)


def test_drop_crowd_removes_crowd_boxes_with_all_their_fields():
    image, target = make_sample(
        [[0, 0, 10, 10], [5, 5, 20, 20], [1, 2, 3, 4]],
        30,
        30,
        iscrowd=torch.tensor([False, True, False]),
    )
    target["difficult"] = torch.tensor([True, False, False])
    _, out = drop_crowd(image, target)
    assert out["boxes"].tolist() == [[0, 0, 10, 10], [1, 2, 3, 4]]
    assert isinstance(out["boxes"], tv_tensors.BoundingBoxes)
    assert out["labels"].tolist() == [1, 3] and out["difficult"].tolist() == [True, False]
    assert out["iscrowd"].tolist() == [False, False]
    assert out["label_map"].shape == (30, 30)  # a per-pixel map is not per box
    assert drop_crowd(image, {"boxes": target["boxes"]})[1]["boxes"] is target["boxes"]


def test_difficult_flags_follow_their_boxes():
    difficult = torch.tensor([True, False] * 8)
    image, target = make_sample(
        grid_boxes(torch.Generator().manual_seed(3), 160, 160), 160, 160, difficult=difficult
    )
    for seed in range(10):
        torch.manual_seed(seed)
        _, out = train_transforms(64)(image, target)
        assert out["difficult"].tolist() == [label % 2 == 1 for label in out["labels"].tolist()]


@st.composite
def box_samples(draw):
    height, width = draw(st.integers(20, 120)), draw(st.integers(20, 120))
    count = draw(st.integers(0, 6))
    boxes = []
    for _ in range(count):
        x1, x2 = sorted(draw(st.floats(0, width, allow_nan=False)) for _ in range(2))
        y1, y2 = sorted(draw(st.floats(0, height, allow_nan=False)) for _ in range(2))
        boxes.append([x1, y1, x2, y2])
    return boxes, height, width, draw(st.integers(0, 2**31))


@given(box_samples())
def test_any_boxes_come_out_valid_and_relative(sample):
    boxes, height, width, seed = sample
    image, target = make_sample(boxes, height, width)
    torch.manual_seed(seed)
    _, out = train_transforms(48)(image, target)
    result = out["boxes"]
    assert ((result >= 0) & (result <= 1)).all()
    assert (result[:, 2:] - result[:, :2] >= 1 / 48 - 1e-6).all()
    assert set(out["labels"].tolist()) <= set(range(1, len(boxes) + 1))


def test_collate_stacks_images_and_keeps_boxes_per_image():
    dataset = SyntheticShapes(6, 80, transforms=train_transforms(32))
    batch = next(iter(DataLoader(dataset, batch_size=3, collate_fn=collate)))
    assert isinstance(batch, Batch)
    assert batch.images.shape == (3, 3, 32, 32) and type(batch.images) is torch.Tensor
    assert len(batch.boxes) == len(batch.labels) == 3
    for boxes, labels in zip(batch.boxes, batch.labels):
        assert boxes.shape == (len(labels), 4) and type(boxes) is torch.Tensor
    assert batch.extra == {}


def test_collate_passes_other_fields_as_lists():
    samples = [
        make_sample(
            [[0, 0, 5, 5]] * n, 20, 20, difficult=torch.zeros(n, dtype=torch.bool), image_id=str(n)
        )
        for n in (1, 3)
    ]
    samples = [eval_transforms(16)(*s) for s in samples]
    batch = collate(samples)
    assert [len(b) for b in batch.boxes] == [1, 3]
    assert batch.extra["image_id"] == ["1", "3"]
    assert [len(d) for d in batch.extra["difficult"]] == [1, 3]


FLIP_ONLY = {**ALL_OFF, "flip": True}


def pool_items(size=32):
    """Items at the network's size, uint8: crowds, a box thinner than a pixel, an empty one."""
    boxes = ([[1, 2, 9, 12], [4, 4, 4.5, 20], [10, 10, 30, 30]], [[0, 0, 32, 16]], [])
    return [
        make_sample(b, size, size, seed=i, iscrowd=torch.arange(len(b)) == 2)
        for i, b in enumerate(boxes)
    ]


@pytest.mark.parametrize("flip", [False, True])
def test_collate_flipped_is_the_flip_only_pipeline_on_a_whole_batch(flip):
    items = pool_items()
    mirror = v2.RandomHorizontalFlip(p=1.0) if flip else v2.Identity()
    rest = train_transforms(32, **ALL_OFF)
    expected = collate([rest(*mirror(image, dict(target))) for image, target in items])
    batch = collate_flipped(items, p=float(flip))
    torch.testing.assert_close(batch.images, expected.images, rtol=0, atol=1e-6)
    for got, want in zip(batch.boxes, expected.boxes):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert [t.tolist() for t in batch.labels] == [t.tolist() for t in expected.labels]
    assert batch.extra.keys() == expected.extra.keys()
    for got, want in zip(batch.extra["position"], expected.extra["position"]):
        assert torch.equal(got, want)


def test_collate_flipped_flips_about_half_and_leaves_the_items_alone():
    items = pool_items() * 50
    kept = items[0][0].clone()
    torch.manual_seed(0)
    batch = collate_flipped(items)
    plain = collate_flipped(items, p=0.0).images
    flipped = (batch.images == plain.flip(-1)).flatten(1).all(dim=1)
    kept_as_is = (batch.images == plain).flatten(1).all(dim=1)
    assert (flipped | kept_as_is).all()
    assert 0.35 < flipped.float().mean() < 0.65
    assert torch.equal(items[0][0], kept)


def test_collate_flipped_rejects_float_images_and_bad_probabilities():
    floats = [train_transforms(32, **FLIP_ONLY)(*item) for item in pool_items()[:2]]
    with pytest.raises(ValueError, match="needs uint8 images"):
        collate_flipped(floats)
    with pytest.raises(ValueError, match=r"p must be a probability in \[0, 1\], got 1.5"):
        collate_flipped(pool_items()[:2], p=1.5)


def test_collate_rejects_images_of_different_sizes_and_fields():
    a = (torch.zeros(3, 8, 8), {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)})
    b = (torch.zeros(3, 8, 9), {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)})
    with pytest.raises(ValueError, match="images of one shape"):
        collate([a, b])
    c = (
        torch.zeros(3, 8, 8),
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0), "difficult": torch.zeros(0)},
    )
    with pytest.raises(ValueError, match="same target fields"):
        collate([a, c])


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="size must be a positive"):
        eval_transforms(0)
    with pytest.raises(ValueError, match=r"must be tv_tensors\.BoundingBoxes in XYXY"):
        relative_boxes(torch.zeros(3, 4, 4), {"boxes": torch.zeros(0, 4)})
