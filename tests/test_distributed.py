"""Training in several processes (DistributedDataParallel, torchrun) equals one process.

The multi-process tests start two Gloo processes on the CPU, either with
``torch.multiprocessing.spawn`` (to compare a few steps with one process exactly) or with
``torchrun`` (the command line end to end).
"""

import os
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from ssd_tutorial import distributed
from ssd_tutorial.anchors import default_boxes
from ssd_tutorial.checkpoint import load_model
from ssd_tutorial.data.shapes import CLASS_NAMES, SyntheticShapes
from ssd_tutorial.data.transforms import collate, eval_transforms, train_transforms
from ssd_tutorial.loss import MultiBoxLoss
from ssd_tutorial.model import build_ssd
from ssd_tutorial.train import TrainConfig, Trainer

WORLD_SIZE = 2
STEPS = 3
#: SGD with momentum and weight decay, float32: every part of the update must agree.
CONFIG = TrainConfig(lr=1e-2, amp=None)


def test_the_global_batch_splits_evenly_over_the_processes():
    assert distributed.local_batch_size(32, 1) == 32
    assert distributed.local_batch_size(32, 4) == 8
    with pytest.raises(ValueError, match=r"batch size 5 .* must be divisible by 2 \(e\.g\. 4\)"):
        distributed.local_batch_size(5, 2)
    with pytest.raises(ValueError, match="batch size must be >= 1, got 0"):
        distributed.local_batch_size(0, 1)


def test_without_torchrun_nothing_is_initialised(monkeypatch):
    for name in distributed.TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with distributed.process_group("cpu") as device:
        assert device == torch.device("cpu")
        assert not torch.distributed.is_initialized()
        assert (distributed.world_size(), distributed.rank()) == (1, 0)
        assert distributed.is_main_process()


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("mps", r"cuda \(NCCL\) or cpu \(Gloo\) devices, got mps"),
        ("cuda:1", "without an index"),
        ("cuda", r"process 1000 of this machine but it has \d+ GPU"),
    ],
)
def test_torchrun_refuses_devices_it_cannot_share_out(monkeypatch, device, message):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1000")  # more processes than any machine has GPUs
    with pytest.raises(ValueError, match=message):
        distributed.setup(device)
    assert not torch.distributed.is_initialized()


@pytest.mark.slow
def test_fit_tells_a_distributed_sampler_each_epoch():
    epochs = []

    class RecordingSampler(DistributedSampler):
        def set_epoch(self, epoch: int) -> None:
            epochs.append(epoch)
            super().set_epoch(epoch)

    data = SyntheticShapes(length=4, image_size=128, seed=7, transforms=eval_transforms(128))
    sampler = RecordingSampler(data, num_replicas=2, rank=0, seed=0)
    loader = DataLoader(data, batch_size=2, sampler=sampler, collate_fn=collate)
    model = build_ssd("ssd_tiny", len(CLASS_NAMES))
    trainer = Trainer(model, TrainConfig(epochs=2), device="cpu", progress=False)
    trainer.fit(loader)
    assert epochs == [0, 1] and trainer.step == 2


# Two processes against one, on a fixed batch -------------------------------------------------


def fixed_batch():
    """Four images whose two halves (one per process) have different numbers of positives."""
    data = SyntheticShapes(length=4, image_size=128, seed=7, transforms=eval_transforms(128))
    return collate([data[i] for i in range(len(data))])


def shard(batch, rank: int, world_size: int = WORLD_SIZE):
    """Process ``rank``'s contiguous part of ``batch`` (images, boxes, labels)."""
    size = len(batch.images) // world_size
    part = slice(rank * size, (rank + 1) * size)
    return batch.images[part], batch.boxes[part], batch.labels[part]


def freeze_batch_norm(model: nn.Module) -> nn.Module:
    """Batch norm with its running statistics, the same function of an image in any batch.

    Training-mode batch norm normalises with the statistics of the batch a process sees, so
    two processes with two images each compute another function than one process with four
    (the reason for ``SyncBatchNorm``, which needs CUDA). Frozen, it leaves the comparison to
    what DDP and the loss normalisation must get right.
    """
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eval()
    return model


def tiny_trainer(seed: int, config: TrainConfig = CONFIG, **kwargs) -> Trainer:
    torch.manual_seed(seed)
    model = freeze_batch_norm(build_ssd("ssd_tiny", len(CLASS_NAMES)))
    # Channels-last convolutions sum weight gradients over the batch in an order that depends
    # on its size, 2 or 4 images, and the weights of the two runs then differ by up to 2e-5
    # after three steps. In the contiguous format they agree to 1e-6, which keeps the test
    # sharp: it is about splitting the batch, not about memory formats.
    model.channels_last = False
    return Trainer(model, config, device="cpu", progress=False, class_names=CLASS_NAMES, **kwargs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, folder: Path) -> None:
    """One of two processes, set up as ``torchrun`` would (environment variables)."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD_SIZE),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)  # two processes on two cores
    # A collective that one process never joins fails the test in a minute, not in 30.
    distributed.TIMEOUT = timedelta(minutes=1)
    with distributed.process_group("cpu") as device:
        assert device == torch.device("cpu") and distributed.world_size() == WORLD_SIZE
        _steps_on_the_fixed_batch(rank, folder)
        _resumed_run(folder)
        with pytest.raises(ValueError, match="sync_bn needs CUDA devices"):
            tiny_trainer(0, TrainConfig(sync_bn=True))
        _one_process_diverges(rank)


def _one_process_diverges(rank: int) -> None:
    """NaN predictions on rank 1 only: both processes stop at that step, neither waits."""
    trainer = tiny_trainer(0)
    if rank == 1:
        with torch.no_grad():
            trainer.model.head.conf[0].weight.fill_(float("nan"))
        expected = (FloatingPointError, "non-finite predictions at step 1")
    else:
        expected = (RuntimeError, "another training process failed in this step's loss")
    with pytest.raises(expected[0], match=expected[1]):
        trainer.train_step(shard(fixed_batch(), rank))


def _steps_on_the_fixed_batch(rank: int, folder: Path) -> None:
    # Another initialisation on each rank: the single-process checkpoint must override it.
    trainer = tiny_trainer(seed=100 + rank)
    trainer.load_checkpoint(folder / "start.pt")
    torch.save(trainer.model.state_dict(), folder / f"loaded_{rank}.pt")
    batch = shard(fixed_batch(), rank)
    rows = [trainer.train_step(batch) for _ in range(STEPS)]
    torch.save(rows, folder / f"rows_{rank}.pt")
    trainer.save_checkpoint(folder / "ddp.pt")  # rank 0 writes, rank 1 returns


def _resumed_run(folder: Path) -> None:
    """Two epochs straight, and one epoch then a resumed one: the same losses."""
    data = SyntheticShapes(length=8, image_size=128, seed=7, transforms=train_transforms(128))

    def loader():
        sampler = DistributedSampler(data, shuffle=True, seed=0)
        return DataLoader(data, batch_size=2, sampler=sampler, collate_fn=collate)

    config = TrainConfig(epochs=2, lr=1e-3, amp=None, log_every=1)
    straight = tiny_trainer(0, config).fit(loader())
    tiny_trainer(0, TrainConfig(**{**config.__dict__, "epochs": 1}), out_dir=folder).fit(loader())
    resumed = tiny_trainer(0, config)
    resumed.load_checkpoint(folder / "last.pt")
    assert (resumed.epoch, resumed.step) == (1, 2)
    losses = [row["loss"] for row in resumed.fit(loader())]
    assert losses == [row["loss"] for row in straight[2:]]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """One process with the whole batch, then two processes with half each, from one start."""
    folder = tmp_path_factory.mktemp("ddp")
    batch = fixed_batch()
    single = tiny_trainer(seed=0)
    single.save_checkpoint(folder / "start.pt")
    with torch.no_grad():
        positives = [
            MultiBoxLoss()(
                *single.model(images), boxes, labels, default_boxes(single.model.config)
            ).num_positives
            for images, boxes, labels in (shard(batch, rank) for rank in range(WORLD_SIZE))
        ]
    rows = [single.train_step(batch) for _ in range(STEPS)]
    torch.multiprocessing.spawn(_worker, args=(free_port(), folder), nprocs=WORLD_SIZE)
    return SimpleNamespace(folder=folder, single=single, rows=rows, positives=positives)


def read(path: Path) -> dict:
    """A whole checkpoint (its RNG states are not plain tensors)."""
    return torch.load(path, weights_only=False)


@pytest.mark.slow
def test_two_processes_take_the_steps_of_one_process_with_the_global_batch(two_processes):
    # Shards with different positives: averaging per-shard losses would not be the same loss.
    assert two_processes.positives[0] != two_processes.positives[1]
    for rank in range(WORLD_SIZE):
        rows = torch.load(two_processes.folder / f"rows_{rank}.pt")
        for ours, reference in zip(rows, two_processes.rows, strict=True):
            assert ours["positives"] == reference["positives"] == sum(two_processes.positives)
            for key in ("loss", "loc", "conf", "lr"):
                assert ours[key] == pytest.approx(reference[key], rel=1e-5), key
    final = load_model(two_processes.folder / "ddp.pt")[0].state_dict()
    start = read(two_processes.folder / "start.pt")["model"]
    trained = two_processes.single.model.state_dict()
    torch.testing.assert_close(final, trained, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(final["head.conf.0.weight"], start["head.conf.0.weight"])


@pytest.mark.slow
def test_a_checkpoint_written_under_ddp_loads_in_one_process(two_processes):
    checkpoint = read(two_processes.folder / "ddp.pt")
    assert not any(key.startswith("module.") for key in checkpoint["model"])
    assert checkpoint["step"] == STEPS
    model, class_names = load_model(two_processes.folder / "ddp.pt")
    assert class_names == CLASS_NAMES and model.architecture == "ssd_tiny"


@pytest.mark.slow
def test_a_single_process_checkpoint_loads_in_every_ddp_process(two_processes):
    start = read(two_processes.folder / "start.pt")["model"]
    for rank in range(WORLD_SIZE):  # each began from other random weights
        loaded = torch.load(two_processes.folder / f"loaded_{rank}.pt")
        torch.testing.assert_close(loaded, start, rtol=0, atol=0)


# The command line under torchrun ---------------------------------------------------------------


def torchrun(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=2 -m ssd_tutorial.cli ARGS`` on the CPU."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc_per_node={WORLD_SIZE}", "-m", "ssd_tutorial.cli", *args]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=environment)


TRAIN = ("train", "--model", "ssd_tiny", "--device", "cpu", "--workers", "0", "--quiet")
SMALL = (*TRAIN, "--batch-size", "4", "--train-size", "8", "--val-size", "4", "--log-every", "1")


@pytest.mark.slow
def test_torchrun_trains_resumes_and_writes_one_set_of_logs(tmp_path):
    out = tmp_path / "run"
    result = torchrun(*SMALL, "--epochs", "1", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("checkpoint and logs in") == 1  # rank 0 only
    assert (out / "last.pt").is_file()

    result = torchrun(*SMALL, "--epochs", "2", "--out", str(out), "--resume", str(out / "last.pt"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("resumed from") == 1 and "at epoch 1, step 2" in result.stdout
    steps = [line.split(",")[1] for line in (out / "train.csv").read_text().splitlines()[1:]]
    assert steps == ["1", "2", "3", "4"]  # two steps of 4 images (2 per process) an epoch
    assert len((out / "eval.csv").read_text().splitlines()) == 3  # header + two epochs
    model, _ = load_model(out / "last.pt")  # in this single process
    assert model.num_classes == len(CLASS_NAMES)


@pytest.mark.slow
def test_torchrun_refuses_a_batch_that_does_not_split(tmp_path):
    result = torchrun(*TRAIN, "--batch-size", "3", "--max-steps", "1", "--out", str(tmp_path))
    assert result.returncode != 0
    assert "batch size 3 is the global batch of all 2 processes" in result.stderr
    assert "must be divisible by 2" in result.stderr
