"""Shared timing helpers: median times with torch.utils.benchmark and a ratio table."""

from __future__ import annotations

import argparse
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.utils import benchmark


@dataclass
class Comparison:
    """Median seconds of ours and torchvision's for one task (``speedup`` > 1: ours is faster)."""

    task: str
    ours_s: float
    theirs_s: float

    @property
    def speedup(self) -> float:
        return self.theirs_s / self.ours_s


def median_seconds(fn: Callable[[], object], min_run_time: float = 1.0) -> float:
    """Median wall time of ``fn()`` after a warm-up, synchronising CUDA if used."""
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median


def compare(
    task: str, ours: Callable[[], object], theirs: Callable[[], object], min_run_time: float = 1.0
) -> Comparison:
    """Time both callables in this process, interleaved, and return their medians."""
    return Comparison(
        task, median_seconds(ours, min_run_time), median_seconds(theirs, min_run_time)
    )


def batch_arguments(description: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options of the batch benchmarks, parsed; sets torch's thread count if asked.

    Adds ``min_run_time`` (seconds per measurement) and fills in the default ``rounds``.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="shorter timing runs")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, help="timing rounds (default 3, quick 1)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.min_run_time = 0.3 if args.quick else 1.0
    args.rounds = args.rounds or (1 if args.quick else 3)
    return args


def best_of_rounds(
    tasks: dict[str, tuple[Callable[[], object], Callable[[], object]]],
    rounds: int,
    min_run_time: float = 1.0,
) -> list[Comparison]:
    """Time every task (name -> ``(ours, theirs)``) in ``rounds`` rounds and keep each side's
    best median: other processes may share the CPU, and a burst of load during one side's turn
    then decides one round, not the ratio."""
    best: dict[str, Comparison] = {}
    for _ in range(rounds):
        for task, (ours, theirs) in tasks.items():
            result = compare(task, ours, theirs, min_run_time)
            if task in best:
                result.ours_s = min(result.ours_s, best[task].ours_s)
                result.theirs_s = min(result.theirs_s, best[task].theirs_s)
            best[task] = result
    return list(best.values())


def environment() -> str:
    """One line naming torch, torchvision, device and thread count."""
    import torchvision

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor()
    return (
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"device {device or 'cpu'}, threads {torch.get_num_threads()}"
    )


def table(rows: list[Comparison]) -> str:
    """A Markdown table: task, ours, torchvision, speed-up."""
    lines = ["| task | ours (ms) | torchvision (ms) | speed-up |", "| --- | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(
            f"| {r.task} | {r.ours_s * 1e3:.2f} | {r.theirs_s * 1e3:.2f} | {r.speedup:.2f}x |"
        )
    return "\n".join(lines)


#: Markers of the learning benchmark's section of RESULTS.md (``bench_learning.py --write``),
#: which ``bench_all.py --write`` keeps when it rewrites the rest of the file.
LEARNING_START, LEARNING_END = "<!-- learning -->", "<!-- /learning -->"
#: The end of the speed results (the book includes them up to here).
RESULTS_END = "<!-- /results -->"


def learning_section(page: str) -> str:
    """The learning section of a RESULTS.md page, markers included ("" if it has none)."""
    start, end = page.find(LEARNING_START), page.find(LEARNING_END)
    if start < 0 or end < start:
        return ""
    return page[start : end + len(LEARNING_END)]


def with_learning_section(page: str, section: str) -> str:
    """``page`` with its learning section replaced by ``section`` (appended if it has none)."""
    old = learning_section(page)
    if old:
        return page.replace(old, section)
    return page.rstrip("\n") + "\n\n## How fast the tiny SSD learns\n\n" + section + "\n"
