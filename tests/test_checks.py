import importlib
import inspect
import json
import pkgutil
import subprocess
import sys

import pytest
import torch

import ssd_tutorial
from ssd_tutorial import cocoeval
from ssd_tutorial.checks import (
    check_iou_threshold,
    check_num_classes,
    class_names_with_background,
    describe,
    invalid_labels,
    non_finite_rows,
)


def test_describe_gives_a_tensors_shape_and_anything_elses_type():
    assert describe(torch.zeros(2, 3)) == [2, 3]
    assert describe([1, 2]) == "list"


@pytest.mark.parametrize(
    ("num_classes", "expected"),
    [(None, [True, False, False, False]), (3, [True, False, False, True])],
)
def test_invalid_labels_are_the_background_and_those_past_the_last_class(num_classes, expected):
    assert invalid_labels(torch.tensor([0, 1, 2, 3]), num_classes).tolist() == expected


def test_non_finite_rows_names_the_rows_and_ignores_an_overflowing_sum():
    values = torch.zeros(3, 2)
    assert non_finite_rows(values) is None
    values[1, 0] = float("nan")
    assert non_finite_rows(values).tolist() == [False, True, False]
    huge = torch.full((4, 2), torch.finfo(torch.float32).max)  # the sum is inf, no value is
    assert non_finite_rows(huge) is None


def test_bad_class_counts_and_thresholds_are_named():
    with pytest.raises(
        ValueError, match=r"conf needs C >= 2 classes \(background \+ 1\), got C = 1"
    ):
        check_num_classes(1, "conf")
    for threshold in (0.0, 1.5):
        with pytest.raises(ValueError, match=r"iou_threshold must be in \(0, 1\]"):
            check_iou_threshold(threshold)
    check_iou_threshold(1.0)


@pytest.mark.parametrize(
    ("module", "blocked", "extra"),
    [
        ("ssd_tutorial.export", "onnxruntime", "export"),
        ("ssd_tutorial.photos", "skimage", "photos"),
    ],
)
def test_a_missing_extra_is_named_in_the_import_error(module, blocked, extra):
    # A fresh interpreter in which the optional package cannot be imported.
    code = (
        f"import sys; sys.modules[{blocked!r}] = None; import {module} as m; "
        "getattr(m, 'chelsea', lambda: None)()"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0
    assert f"pip install ssd-tutorial[{extra}]" in result.stderr


def test_the_coco_metrics_name_their_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pycocotools.coco", None)
    with pytest.raises(ImportError, match=r"pip install ssd-tutorial\[coco\]"):
        cocoeval.run_cocoeval(
            [{"boxes": [], "scores": [], "labels": []}], [{"boxes": [], "labels": []}]
        )


#: The packages of the extras (pyproject's optional-dependencies), blocked as if not installed.
OPTIONAL_PACKAGES = ("onnx", "onnxruntime", "onnxscript", "pycocotools", "skimage")
#: The modules that cannot be imported without their extra.
NEED_AN_EXTRA = {
    "ssd_tutorial.export": "export",
    "ssd_tutorial.onnx_detect": "export",
    "ssd_tutorial.live": "export",  # the live page writes ONNX files
}

IMPORT_EVERY_MODULE = """
import importlib, json, pkgutil, sys
for name in {blocked!r}:
    sys.modules[name] = None
import ssd_tutorial
results = {{}}
for info in pkgutil.walk_packages(ssd_tutorial.__path__, "ssd_tutorial."):
    try:
        importlib.import_module(info.name)
        results[info.name] = None
    except ImportError as error:
        results[info.name] = str(error)
print(json.dumps(results))
"""


def test_without_the_extras_every_module_imports_or_names_the_extra_it_needs():
    code = IMPORT_EVERY_MODULE.format(blocked=OPTIONAL_PACKAGES)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    errors = json.loads(result.stdout)
    assert {"ssd_tutorial.detector", "ssd_tutorial.evaluate", "ssd_tutorial.cli"} <= set(errors)
    failed = {module: error for module, error in errors.items() if error is not None}
    assert set(failed) == set(NEED_AN_EXTRA)
    for module, extra in NEED_AN_EXTRA.items():
        assert f"pip install ssd-tutorial[{extra}]" in failed[module]


def test_every_signature_has_the_packages_defaults():
    from ssd_tutorial import boxes, loss, postprocess

    expected = {
        "variances": boxes.VARIANCES,
        "iou_threshold": boxes.IOU_THRESHOLD,
        "nms_threshold": postprocess.NMS_THRESHOLD,
        "top_k": postprocess.TOP_K,
        "candidates_per_class": postprocess.CANDIDATES_PER_CLASS,
        "neg_pos_ratio": loss.NEG_POS_RATIO,
    }
    seen = dict.fromkeys(expected, 0)
    for info in pkgutil.walk_packages(ssd_tutorial.__path__, "ssd_tutorial."):
        module = importlib.import_module(info.name)
        for _, value in inspect.getmembers(module, callable):
            if getattr(value, "__module__", None) != info.name:
                continue
            target = value.__init__ if inspect.isclass(value) else value
            try:
                parameters = inspect.signature(target).parameters.values()
            except (TypeError, ValueError):
                continue
            for parameter in parameters:
                if parameter.name in expected and parameter.default is not parameter.empty:
                    seen[parameter.name] += 1
                    where = f"{info.name}.{value.__qualname__}({parameter.name})"
                    assert parameter.default == expected[parameter.name], where
    assert all(count >= 2 for count in seen.values()), seen  # the names are still in use


def test_class_names_get_the_background_first_when_they_name_only_the_objects():
    assert class_names_with_background(["cat", "dog"], 3) == ("background", "cat", "dog")
    assert class_names_with_background(("bg", "cat", "dog"), 3) == ("bg", "cat", "dog")
    with pytest.raises(ValueError, match=r"model's 3 classes .* or its 2 object classes, got 4"):
        class_names_with_background(["a", "b", "c", "d"], 3)
