"""Throughput measurement of meta-training (what ``maml-tune bench`` reports)."""

from __future__ import annotations

import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from maml_tune.core.config import RunConfig
from maml_tune.core.tasks import TaskSampler
from maml_tune.core.trainer import MetaTrainer

WARMUP_ITERATIONS = 3
WINDOWS = 5


@dataclass(frozen=True)
class BenchResult:
    """Median tasks/s over timed windows after warm-up, and the peak memory of the process."""

    strategy: str
    device: str
    meta_batch: int
    inner_steps: int
    first_order: bool
    tasks_per_sec: float
    window_tasks_per_sec: tuple[float, ...]
    peak_rss_mb: float
    peak_gpu_mb: float | None
    task_chunk: int = 0
    precision: str = "fp32"
    checkpoint_inner: bool = False
    second_order_steps: int | None = None

    def to_dict(self) -> dict:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["window_tasks_per_sec"] = list(self.window_tasks_per_sec)
        if out["peak_gpu_mb"] is None:
            del out["peak_gpu_mb"]
        return out


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB.

    On Linux it reads ``VmHWM``: ``ru_maxrss`` survives ``fork`` and ``exec``, so a process
    started by a bigger one (a benchmark measuring in a fresh subprocess, a search worker)
    would report its parent's peak instead of its own.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_throughput(
    config: RunConfig,
    sampler: TaskSampler,
    device: torch.device,
    seconds: float,
    progress: Callable[[int, int], None] | None = None,
) -> BenchResult:
    """Run meta-training's own iterations (:meth:`MetaTrainer.step`: sample, meta-gradient,
    finiteness checks, clipping, optimiser step) of ``config`` for about ``seconds`` after
    warm-up, in :data:`WINDOWS` windows, and report the median rate; ``progress(done, WINDOWS)``
    follows the windows."""
    trainer = MetaTrainer(config, sampler, device)
    run = trainer.start()
    meta_batch = config.train.meta_batch
    done = 0

    def iteration() -> None:
        nonlocal done
        done += 1
        trainer.step(run, done)

    for _ in range(WARMUP_ITERATIONS):
        iteration()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rates = []
    window = seconds / WINDOWS
    for _ in range(WINDOWS):
        count, started = 0, time.perf_counter()
        while True:
            iteration()
            count += 1
            _sync(device)
            elapsed = time.perf_counter() - started
            if elapsed >= window:
                break
        rates.append(count * meta_batch / elapsed)
        if progress is not None:
            progress(len(rates), WINDOWS)
    gpu = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return BenchResult(
        trainer.strategy, str(device), meta_batch, config.algo.inner_steps, config.algo.is_first_order,
        statistics.median(rates), tuple(rates), peak_rss_mb(), gpu,
        trainer.task_chunk, config.train.precision, config.algo.checkpoint_inner,
        config.algo.second_order_steps,
    )
