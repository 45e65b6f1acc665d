import pytest
import torch
import torchvision
from hypothesis import given
from hypothesis import strategies as st

from ssd_tutorial import boxes as B


def random_boxes(n: int, generator: torch.Generator, min_size: float = 1e-3) -> torch.Tensor:
    top_left = torch.rand(n, 2, generator=generator)
    size = torch.rand(n, 2, generator=generator) * (1 - top_left) + min_size
    return torch.cat((top_left, top_left + size), dim=1)


@st.composite
def box_tensors(draw, max_boxes: int = 8):
    n = draw(st.integers(1, max_boxes))
    coord = st.floats(0, 1, allow_nan=False, width=32)
    size = st.floats(0.001953125, 1, allow_nan=False, width=32)
    rows = draw(st.lists(st.tuples(coord, coord, size, size), min_size=n, max_size=n))
    t = torch.tensor(rows, dtype=torch.float64)
    return torch.cat((t[:, :2], t[:, :2] + t[:, 2:]), dim=1)


def test_format_conversion_known_values():
    corners = torch.tensor([[0.1, 0.2, 0.5, 0.6]])
    center = torch.tensor([[0.3, 0.4, 0.4, 0.4]])
    torch.testing.assert_close(B.corners_to_center(corners), center)
    torch.testing.assert_close(B.center_to_corners(center), corners)


def test_box_area_known_values():
    boxes = torch.tensor([[0.0, 0.0, 2.0, 3.0], [1.0, 1.0, 1.0, 5.0]])
    torch.testing.assert_close(B.box_area(boxes), torch.tensor([6.0, 0.0]))


def test_box_iou_known_values():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [5.0, 5.0, 6.0, 6.0]])
    # intersection 1, union 4 + 4 - 1 = 7
    torch.testing.assert_close(B.box_iou(a, b), torch.tensor([[1 / 7, 1.0, 0.0]]))


def test_box_iou_matches_torchvision():
    g = torch.Generator().manual_seed(0)
    a, b = random_boxes(50, g), random_boxes(70, g)
    torch.testing.assert_close(B.box_iou(a, b), torchvision.ops.box_iou(a, b))


def test_box_iou_batched_over_leading_dimensions():
    g = torch.Generator().manual_seed(1)
    a = random_boxes(2 * 3 * 5, g).reshape(2, 3, 5, 4)
    b = random_boxes(2 * 3 * 7, g).reshape(2, 3, 7, 4)
    iou = B.box_iou(a, b)
    assert iou.shape == (2, 3, 5, 7)
    torch.testing.assert_close(iou[1, 2], torchvision.ops.box_iou(a[1, 2], b[1, 2]))


def test_box_iou_of_two_empty_boxes_is_zero_not_nan():
    empty = torch.tensor([[0.5, 0.5, 0.5, 0.5]])
    assert B.box_iou(empty, empty).item() == 0.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_box_iou_keeps_dtype(dtype):
    g = torch.Generator().manual_seed(2)
    a, b = random_boxes(4, g).to(dtype), random_boxes(3, g).to(dtype)
    iou = B.box_iou(a, b)
    assert iou.dtype == dtype
    torch.testing.assert_close(
        iou.double(), torchvision.ops.box_iou(a.double(), b.double()), atol=1e-2, rtol=1e-2
    )


@given(box_tensors(), box_tensors())
def test_box_iou_is_symmetric_and_bounded(a, b):
    iou = B.box_iou(a, b)
    torch.testing.assert_close(iou, B.box_iou(b, a).T)
    assert bool(((iou >= 0) & (iou <= 1 + 1e-12)).all())


@given(box_tensors())
def test_box_iou_with_itself_is_one(a):
    torch.testing.assert_close(B.box_iou(a, a).diagonal(), torch.ones(len(a), dtype=a.dtype))


@given(box_tensors())
def test_format_round_trip(a):
    torch.testing.assert_close(B.center_to_corners(B.corners_to_center(a)), a)


@given(box_tensors(), box_tensors())
def test_encode_decode_round_trip(gt, priors_corners):
    n = min(len(gt), len(priors_corners))
    priors = B.corners_to_center(priors_corners[:n])
    offsets = B.encode(gt[:n], priors)
    torch.testing.assert_close(B.decode(offsets, priors), gt[:n])


def test_encode_known_values():
    prior = torch.tensor([[0.5, 0.5, 0.2, 0.4]])
    gt = torch.tensor([[0.42, 0.3, 0.62, 0.7]])  # centre (0.52, 0.5), size (0.2, 0.4)
    expected = torch.tensor([[0.02 / (0.1 * 0.2), 0.0, 0.0, 0.0]])
    torch.testing.assert_close(B.encode(gt, prior), expected)


def test_encode_decode_batched_over_images():
    g = torch.Generator().manual_seed(3)
    priors = B.corners_to_center(random_boxes(10, g))
    gt = random_boxes(3 * 10, g).reshape(3, 10, 4)
    offsets = B.encode(gt, priors)
    assert offsets.shape == (3, 10, 4)
    torch.testing.assert_close(B.decode(offsets, priors), gt)


def test_encode_with_zero_offsets_gives_the_prior():
    g = torch.Generator().manual_seed(4)
    priors = B.corners_to_center(random_boxes(5, g))
    torch.testing.assert_close(B.decode(torch.zeros(5, 4), priors), B.center_to_corners(priors))


@pytest.mark.parametrize(
    ("boxes", "message"),
    [
        (torch.zeros(3, 5), r"shape \[\.\.\., 4\]"),
        (torch.tensor([[0.0, 0.0, float("nan"), 1.0]]), "non-finite"),
        (torch.tensor([[0.5, 0.0, 0.2, 1.0]]), "x2 >= x1"),
        (torch.tensor([[0.0, 0.5, 1.0, 0.2]]), "y2 >= y1"),
        (torch.tensor([[0, 0, 1, 1]]), "floating-point"),
    ],
)
def test_box_iou_rejects_invalid_boxes(boxes, message):
    good = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    with pytest.raises(ValueError, match=message):
        B.box_iou(boxes, good)
    with pytest.raises(ValueError, match="boxes2"):
        B.box_iou(good, boxes)


def test_check_boxes_rejects_non_tensors():
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        B.check_boxes([[0, 0, 1, 1]])
