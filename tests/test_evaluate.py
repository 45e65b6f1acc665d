import pytest
import torch
from torch.utils.data import DataLoader

from ssd_tutorial import cocoeval, metrics
from ssd_tutorial import evaluate as E
from ssd_tutorial.anchors import SSD_TINY, default_boxes
from ssd_tutorial.boxes import encode
from ssd_tutorial.data.shapes import CLASS_NAMES, SyntheticShapes
from ssd_tutorial.data.transforms import Batch, collate, eval_transforms
from ssd_tutorial.matching import match


class OracleSSD(torch.nn.Module):
    """Predicts, batch after batch, the encoded ground truth: a perfect detector."""

    def __init__(self, batches, priors, noise=0.0):
        super().__init__()
        self.config, self.num_classes = SSD_TINY, len(CLASS_NAMES)
        self.weight = torch.nn.Parameter(torch.zeros(1))  # gives the model a device
        self.outputs = []
        for batch in batches:
            matched, labels = match(batch.boxes, batch.labels, priors)
            conf = torch.nn.functional.one_hot(labels, self.num_classes).float() * 20
            loc = encode(matched, priors)
            self.outputs.append((loc + noise * torch.randn(loc.shape), conf))

    def forward(self, images):
        loc, conf = self.outputs.pop(0)
        assert len(images) == len(loc)
        return loc, conf


def test_evaluate_model_gives_map_one_to_a_perfect_detector():
    data = SyntheticShapes(6, image_size=128, seed=3, transforms=eval_transforms(128))
    loader = DataLoader(data, batch_size=4, collate_fn=collate)
    model = OracleSSD(list(loader), default_boxes(SSD_TINY))
    metrics = E.evaluate_model(model, loader, class_names=CLASS_NAMES, progress=False)
    assert metrics["map"] == pytest.approx(1.0) and metrics["map_area"] == pytest.approx(1.0)
    labels = torch.cat([data[i][1]["labels"] for i in range(len(data))]).unique().tolist()
    assert sorted(k for k in metrics if k.startswith("ap/")) == sorted(
        f"ap/{CLASS_NAMES[label]}" for label in labels
    )


def test_evaluate_model_reports_both_interpolations_of_voc_map():
    data = SyntheticShapes(8, image_size=128, seed=5, transforms=eval_transforms(128))
    batches = list(DataLoader(data, batch_size=4, collate_fn=collate))
    priors = default_boxes(SSD_TINY)
    torch.manual_seed(0)
    metrics = E.evaluate_model(OracleSSD(batches, priors, noise=1.5), batches, progress=False)
    torch.manual_seed(0)  # the same noisy predictions again
    detections, targets = E.predict(OracleSSD(batches, priors, noise=1.5), batches, progress=False)
    for key, interpolation in (("map", "voc07"), ("map_area", "voc2010")):
        assert metrics[key] == E.voc_map(detections, targets, interpolation=interpolation).map
    assert 0 < metrics["map"] < 1


def test_predict_keeps_difficult_flags_and_relative_boxes():
    data = SyntheticShapes(3, image_size=128, seed=4, transforms=eval_transforms(128))
    batches = [
        Batch(
            b.images,
            b.boxes,
            b.labels,
            {"difficult": [torch.ones(len(x), dtype=torch.bool) for x in b.boxes]},
        )
        for b in DataLoader(data, batch_size=3, collate_fn=collate)
    ]
    model = OracleSSD(batches, default_boxes(SSD_TINY))
    detections, targets = E.predict(model, batches, progress=False)
    assert len(detections) == len(targets) == 3
    for target, batch_boxes in zip(targets, batches[0].boxes):
        assert torch.equal(target["boxes"], batch_boxes) and target["difficult"].all()
    assert all(float(d.boxes.min()) >= 0 and float(d.boxes.max()) <= 1 for d in detections)


def test_the_metrics_the_book_calls_through_evaluate_are_the_metrics_modules():
    for name in ("voc_map", "ap_by_size", "average_precision", "VOCResult"):
        assert getattr(E, name) is getattr(metrics, name)
    for name in ("coco_metrics", "run_cocoeval", "COCO_STAT_NAMES"):
        assert getattr(E, name) is getattr(cocoeval, name)
