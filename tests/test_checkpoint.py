import subprocess
import sys

import pytest
import torch

from conftest import tiny_trainer
from ssd_tutorial.checkpoint import load_checkpoint, load_model
from ssd_tutorial.data.shapes import CLASS_NAMES
from ssd_tutorial.model import build_ssd
from ssd_tutorial.train import TrainConfig

NUM_CLASSES = len(CLASS_NAMES)


def test_loading_a_model_does_not_import_the_training_loop():
    code = (
        "import sys, ssd_tutorial.checkpoint, ssd_tutorial.detector, ssd_tutorial.evaluate; "
        "print('ssd_tutorial.train' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_checkpoint_of_another_model_is_refused(tmp_path):
    tiny_trainer(TrainConfig()).save_checkpoint(tmp_path / "tiny.pt")
    other = build_ssd("ssd_tiny", NUM_CLASSES + 1)
    with pytest.raises(ValueError, match=r"another model: num_classes 9 in the checkpoint, 10"):
        load_checkpoint(tmp_path / "tiny.pt", other)
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.pt", other)
    torch.save({"weights": 1}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not an ssd_tutorial checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt", other)


def test_load_model_rebuilds_the_trained_model_with_its_class_names(tmp_path):
    trainer = tiny_trainer(TrainConfig(), class_names=CLASS_NAMES)
    trainer.model.image_mean = (0.5, 0.5, 0.5)
    trainer.save_checkpoint(tmp_path / "last.pt")
    model, class_names = load_model(tmp_path / "last.pt")
    assert class_names == CLASS_NAMES
    assert model.architecture == "ssd_tiny" and not model.training
    assert model.image_mean == (0.5, 0.5, 0.5)
    torch.testing.assert_close(model.state_dict(), trainer.model.state_dict(), rtol=0, atol=0)


def test_load_model_refuses_what_it_cannot_rebuild(tmp_path):
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_model(tmp_path / "garbage.pt")
    trainer = tiny_trainer(TrainConfig())
    trainer.model.architecture = None  # a model put together by hand
    trainer.save_checkpoint(tmp_path / "custom.pt")
    with pytest.raises(ValueError, match="build_ssd cannot rebuild"):
        load_model(tmp_path / "custom.pt")
