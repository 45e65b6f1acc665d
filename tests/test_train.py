import csv
import math
import re
import sys
import types
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from conftest import tiny_trainer
from ssd_tutorial import train
from ssd_tutorial.data.shapes import CLASS_NAMES, SyntheticShapes
from ssd_tutorial.data.transforms import collate, eval_transforms, train_transforms
from ssd_tutorial.train import (
    PRESETS,
    TrainConfig,
    learning_rate_factor,
)

NUM_CLASSES = len(CLASS_NAMES)


def loader(length: int, batch_size: int, augment: bool = True, shuffle: bool = True):
    transforms = train_transforms(128) if augment else eval_transforms(128)
    data = SyntheticShapes(length=length, image_size=128, seed=7, transforms=transforms)
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, collate_fn=collate)


def test_learning_rate_warm_up_and_steps_by_hand():
    config = TrainConfig(lr=0.1, warmup_steps=10, warmup_factor=0.0, milestones=(20, 30))
    assert learning_rate_factor(0, config) == 0.0
    assert learning_rate_factor(5, config) == pytest.approx(0.5)
    assert learning_rate_factor(10, config) == 1.0
    assert learning_rate_factor(20, config) == pytest.approx(0.1)
    assert learning_rate_factor(35, config) == pytest.approx(0.01)


def test_cosine_schedule_by_hand():
    config = TrainConfig(
        lr=0.1, warmup_steps=10, warmup_factor=0.0, schedule="cosine", max_steps=110
    )
    assert learning_rate_factor(5, config) == pytest.approx(0.5 * 1.0)  # warm-up, cosine at 1
    assert learning_rate_factor(10, config) == 1.0
    assert learning_rate_factor(60, config) == pytest.approx(0.5)  # half-way: cos(pi / 2)
    assert learning_rate_factor(35, config) == pytest.approx(0.5 * (1 + 2**-0.5))
    assert learning_rate_factor(110, config) == pytest.approx(0.0, abs=1e-12)
    assert learning_rate_factor(500, config) == pytest.approx(0.0, abs=1e-12)


def test_presets_are_valid_configs():
    for preset in PRESETS.values():
        TrainConfig(**preset)


@pytest.mark.slow
def test_a_few_steps_overfit_a_fixed_batch():
    batch = next(iter(loader(4, 4, augment=False, shuffle=False)))
    trainer = tiny_trainer(TrainConfig(optimizer="adamw", lr=3e-3))
    losses = [trainer.train_step(batch)["loss"] for _ in range(40)]
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.slow
def test_resume_continues_exactly(tmp_path):
    config = TrainConfig(epochs=2, lr=1e-3, log_every=1, warmup_steps=3)
    data = loader(12, 4)  # three batches an epoch, shuffled and augmented
    straight = tiny_trainer(config)
    straight.fit(data)

    first = tiny_trainer(TrainConfig(**{**config.__dict__, "epochs": 1}), out_dir=tmp_path)
    first.fit(data)
    resumed = tiny_trainer(config)
    resumed.load_checkpoint(tmp_path / "last.pt")
    assert (resumed.epoch, resumed.step) == (1, 3)
    resumed.fit(data)
    assert [r["loss"] for r in first.history + resumed.history] == [
        r["loss"] for r in straight.history
    ]
    torch.testing.assert_close(
        resumed.model.state_dict(), straight.model.state_dict(), rtol=0, atol=0
    )


@pytest.mark.slow
def test_max_steps_stops_mid_epoch_and_odd_batch_sizes_work(tmp_path):
    trainer = tiny_trainer(TrainConfig(epochs=5, max_steps=4, log_every=1), out_dir=tmp_path)
    history = trainer.fit(loader(5, 3))  # batches of 3 and 2
    assert trainer.step == 4 and trainer.epoch == 2
    assert [r["step"] for r in history] == [1, 2, 3, 4]
    with (tmp_path / "train.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert {"loss", "loc", "conf", "lr", "img_per_s"} <= set(rows[0])
    assert all(math.isfinite(float(r["loss"])) for r in rows)


@pytest.mark.slow
def test_evaluation_metrics_join_the_history(tmp_path):
    trainer = tiny_trainer(TrainConfig(epochs=1, log_every=1), out_dir=tmp_path)
    history = trainer.fit(loader(4, 4), evaluate=lambda model: {"map": 0.25})
    assert history[-1] == {"epoch": 1, "step": 1, "map": 0.25}
    assert (tmp_path / "eval.csv").read_text().splitlines()[1] == "1,1,0.25"


@pytest.mark.slow
def test_a_diverging_run_stops_with_a_message_naming_the_step():
    trainer = tiny_trainer(TrainConfig(lr=1e8, momentum=0.0))
    batch = next(iter(loader(4, 4, augment=False)))
    with pytest.raises(FloatingPointError, match=r"non-finite (loss|predictions) at step \d+"):
        for _ in range(20):
            trainer.train_step(batch)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"epochs": 0}, "epochs"),
        ({"lr": 0}, "lr"),
        ({"amp": "fp8"}, "amp"),
        ({"optimizer": "lion"}, "optimizer"),
        ({"milestones": (10, 5)}, "milestones"),
        ({"schedule": "linear"}, "schedule"),
        ({"schedule": "cosine"}, "max_steps"),
        ({"schedule": "cosine", "max_steps": 10, "milestones": (5,)}, "no milestones"),
    ],
)
def test_bad_configs_are_rejected(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**changes)


@pytest.mark.parametrize("has_bf16", [True, False])
@pytest.mark.parametrize("amp", ["bf16", "fp16", None])
def test_a_cpu_runs_the_forward_pass_in_bf16_only_where_it_computes_in_it(
    amp, has_bf16, monkeypatch
):
    monkeypatch.setattr(train, "cpu_has_bf16", lambda: has_bf16)
    trainer = tiny_trainer(TrainConfig(optimizer="adamw", amp=amp))
    seen = []
    trainer.model.register_forward_hook(lambda module, inputs, out: seen.append(out[1].dtype))
    trainer.train_step(next(iter(loader(2, 2, augment=False))))
    in_bf16 = amp == "bf16" and has_bf16
    assert seen == [torch.bfloat16 if in_bf16 else torch.float32]
    assert trainer.amp_dtype == (torch.bfloat16 if in_bf16 else None)
    assert not trainer.scaler.is_enabled()  # no float16 on a CPU, so nothing to scale
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="reads Linux's /proc/cpuinfo")
def test_cpu_has_bf16_agrees_with_the_cpu_flags():
    flags = set(re.findall(r"\b(avx512_bf16|amx_tile)\b", Path("/proc/cpuinfo").read_text()))
    assert train.cpu_has_bf16() == (bool(flags) and torch.backends.mkldnn.is_available())


def test_class_names_must_match_the_model():
    with pytest.raises(ValueError, match="class_names has 2 names"):
        tiny_trainer(TrainConfig(), class_names=("background", "circle"))


def test_metrics_go_to_tensorboard_when_it_is_installed(tmp_path, monkeypatch):
    scalars = []

    class FakeWriter:
        def __init__(self, log_dir):
            assert log_dir == str(tmp_path / "tensorboard")

        def add_scalar(self, tag, value, step):
            scalars.append((tag, value, step))

        def flush(self):
            pass

    module = types.ModuleType("torch.utils.tensorboard")
    module.SummaryWriter = FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", module)
    trainer = tiny_trainer(TrainConfig(log_every=1), out_dir=tmp_path)
    trainer._log("eval", {"epoch": 1, "step": 7, "map": 0.5})
    assert scalars == [("eval/map", 0.5, 7)]
