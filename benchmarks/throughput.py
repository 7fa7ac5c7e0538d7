"""Meta-training throughput of the engine against a straightforward per-task-loop reference.

The reference is what a plain PyTorch MAML does: for each task, ``torch.autograd.grad``
with ``create_graph=True`` through the inner steps, then ``backward()`` of that task's
query loss (learn2learn, higher and TorchOpt run at 0.4–1.0× of such a loop). It uses
the same architecture with PyTorch's fused ``nn.BatchNorm2d`` (batch statistics), as a
plain implementation would. Both run the same fixed tasks in the same process, in
interleaved timing windows, so machine noise hits both alike; ``--memory`` measures each
implementation's peak memory: the RSS of a fresh subprocess on CPU, the allocator's peak
above what was already allocated on CUDA (in process: a CUDA start per subprocess would
cost more than the timing).

    python benchmarks/throughput.py                      # CPU table (all workloads)
    python benchmarks/throughput.py --device cuda --json $OUT/throughput.json
    python benchmarks/throughput.py --workloads conv4-5way-1shot --inner-steps 10 \
        --strategies loop,batched --checkpoint-inner --memory   # memory controls

``--task-chunk 1,2,4`` times the vectorised strategies once per chunk size (rows
``batched/c2``...). For conv workloads each row also carries the analytic conv+linear
FLOPs of one meta-iteration and, on CUDA, the achieved TFLOP/s and its share of the
device's dense peak (:data:`PEAK_TFLOPS`). Only ``maml_tune.core`` and torch are imported,
so this runs on a machine with nothing but python3 and torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from maml_tune.core.config import AlgoConfig, ArchConfig
from maml_tune.core.learner import MetaLearner, loss_function
from maml_tune.core.nets import BatchStatNorm
from maml_tune.core.precision import DTYPES
from maml_tune.core.strategies import choose
from maml_tune.core.tasks import TaskBatch


@dataclass(frozen=True)
class Workload:
    name: str
    arch: ArchConfig
    input_shape: tuple[int, ...]
    outputs: int
    kind: str
    meta_batch: int
    support: int
    query: int
    inner_lr: float
    inner_steps: int


WORKLOADS = {
    "sinusoid-1step": Workload("sinusoid-1step", ArchConfig(), (1,), 1, "regression", 25, 10, 10, 0.01, 1),
    "sinusoid-5step": Workload("sinusoid-5step", ArchConfig(), (1,), 1, "regression", 25, 10, 10, 0.01, 5),
    "conv4-5way-1shot": Workload(
        "conv4-5way-1shot", ArchConfig(kind="conv"), (1, 28, 28), 5, "classification", 32, 5, 75, 0.4, 1
    ),
    "conv4-20way-1shot": Workload(
        "conv4-20way-1shot", ArchConfig(kind="conv"), (1, 28, 28), 20, "classification", 16, 20, 300, 0.1, 1
    ),
}


def make_tasks(w: Workload, device: torch.device, seed: int = 0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    t = w.meta_batch
    sx = torch.rand(t, w.support, *w.input_shape, generator=g)
    qx = torch.rand(t, w.query, *w.input_shape, generator=g)
    if w.kind == "regression":
        sy, qy = torch.sin(sx), torch.sin(qx)
    else:
        sy = torch.arange(w.outputs).repeat_interleave(w.support // w.outputs).repeat(t, 1)
        qy = torch.arange(w.outputs).repeat_interleave(w.query // w.outputs).repeat(t, 1)
    return TaskBatch(sx, sy, qx, qy).to(device)


def reference_network(learner: MetaLearner) -> nn.Module:
    """The learner's network with PyTorch's own batch-statistics norm, for the reference loop."""
    net = type(learner.net)(learner.arch, learner.input_shape, learner.output_size)
    net.load_state_dict(learner.net.state_dict())
    for index, module in enumerate(net.body):
        if isinstance(module, BatchStatNorm):
            fused = nn.BatchNorm2d(module.weight.numel(), track_running_stats=False)
            fused.load_state_dict(module.state_dict())
            net.body[index] = fused
    return net.to(next(learner.parameters()).device)


def reference_step(net, optimizer, batch: TaskBatch, w: Workload, first_order: bool, loss_fn) -> None:
    optimizer.zero_grad(set_to_none=True)
    params = dict(net.named_parameters())
    for t in range(batch.n_tasks):
        fast = params
        for _ in range(w.inner_steps):
            loss = loss_fn(functional_call(net, fast, (batch.support_x[t],)), batch.support_y[t])
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not first_order)
            fast = {name: p - w.inner_lr * g for (name, p), g in zip(fast.items(), grads)}
        query = loss_fn(functional_call(net, fast, (batch.query_x[t],)), batch.query_y[t])
        (query / batch.n_tasks).backward()
    optimizer.step()


@dataclass(frozen=True)
class Impl:
    """One implementation to time: ``reference`` or an engine strategy with its options.

    Spelled ``strategy[/cN][/bf16|/fp16][/ckpt]`` on the command line: ``batched/c4/bf16``
    is the batched strategy back-propagating 4 tasks at a time under bf16 autocast.
    """

    strategy: str
    chunk: int = 0
    precision: str = "fp32"
    checkpoint: bool = False

    @classmethod
    def parse(cls, text: str, default_chunk: int = 0, checkpoint: bool = False) -> Impl:
        strategy, *parts = text.split("/")
        chunk, precision = default_chunk, "fp32"
        for part in parts:
            if part.startswith("c") and part[1:].isdigit():
                chunk = int(part[1:])
            elif part in DTYPES:
                precision = part
            elif part == "ckpt":
                checkpoint = True
            else:
                raise SystemExit(f"unknown implementation option {part!r} in {text!r}")
        if strategy not in ("reference", "vmap", "loop", "batched"):
            raise SystemExit(f"unknown implementation {strategy!r}")
        return cls(strategy, chunk if strategy in ("vmap", "batched") else 0, precision, checkpoint)

    @property
    def name(self) -> str:
        name = self.strategy
        if self.chunk:
            name += f"/c{self.chunk}"
        if self.precision != "fp32":
            name += f"/{self.precision}"
        if self.checkpoint:
            name += "/ckpt"
        return name


def with_steps(w: Workload, inner_steps: int | None, meta_batch: int | None = None) -> Workload:
    """``w`` with its inner steps and meta-batch overridden (``None``: kept)."""
    if inner_steps is not None:
        w = dataclasses.replace(w, inner_steps=inner_steps)
    return w if meta_batch is None else dataclasses.replace(w, meta_batch=meta_batch)


def make_runner(
    impl: Impl, w: Workload, first_order: bool, device: torch.device,
    second_order_steps: int | None = None,
):
    """A zero-argument function running one meta-iteration of ``impl`` on workload ``w``.

    The reference is plain fp32 second order through every step (or first order)."""
    torch.manual_seed(0)
    algo = AlgoConfig(
        inner_lr=w.inner_lr, inner_steps=w.inner_steps, first_order=first_order,
        second_order_steps=second_order_steps, checkpoint_inner=impl.checkpoint,
    )
    learner = MetaLearner(w.arch, algo, w.input_shape, w.outputs, w.kind).to(device)
    batch = make_tasks(w, device)
    if impl.strategy == "reference":
        net = reference_network(learner)
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
        loss_fn = loss_function(w.kind)
        return lambda: reference_step(net, optimizer, batch, w, first_order, loss_fn)
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(device.type) if impl.precision == "fp16" else None

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        learner.accumulate_meta_gradient(
            batch, impl.strategy, task_chunk=impl.chunk, precision=impl.precision, grad_scaler=scaler
        )
        if scaler is None:
            optimizer.step()
        else:
            scaler.step(optimizer)
            scaler.update()

    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(runners: dict, device: torch.device, seconds: float, windows: int) -> dict[str, float]:
    """Median iterations/s of each runner over ``windows`` rounds of ``seconds / windows`` each."""
    for run in runners.values():
        run()
        run()
    sync(device)
    rates: dict[str, list[float]] = {name: [] for name in runners}
    budget = seconds / windows / len(runners)
    for _ in range(windows):
        for name, run in runners.items():
            count, started = 0, time.perf_counter()
            while True:
                run()
                sync(device)
                count += 1
                elapsed = time.perf_counter() - started
                if elapsed >= budget:
                    break
            rates[name].append(count / elapsed)
    return {name: statistics.median(r) for name, r in rates.items()}


def peak_memory_mb(
    impl: Impl, workload: Workload, first_order: bool, device: str, second_order_steps: int | None
) -> float:
    """Peak memory of two meta-iterations of ``impl``, in a fresh process (RSS on CPU, allocator on GPU)."""
    code = (
        "import sys; sys.argv = ['x']; import benchmarks.throughput as b, torch;"
        "from maml_tune.core.bench import peak_rss_mb;"
        f"d = torch.device({device!r}); w = b.dataclasses.replace(b.WORKLOADS[{workload.name!r}], "
        f"inner_steps={workload.inner_steps}, meta_batch={workload.meta_batch});"
        f"run = b.make_runner(b.{impl!r}, w, "
        f"{first_order}, d, {second_order_steps!r}); run(); run(); b.sync(d);"
        "print(torch.cuda.max_memory_allocated(d) / 2**20 if d.type == 'cuda' else "
        "peak_rss_mb())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def peak_memory_cuda(
    impl: Impl, workload: Workload, first_order: bool, device: torch.device, second_order_steps: int | None
) -> float:
    """Peak CUDA memory of two meta-iterations of a fresh ``impl`` (its parameters, tasks and
    optimizer state included), measured in this process above what was allocated before."""
    import gc

    gc.collect()
    sync(device)
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    run = make_runner(impl, workload, first_order, device, second_order_steps)
    run()
    run()
    sync(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    del run
    gc.collect()
    torch.cuda.empty_cache()
    return peak / 2**20


# Dense (no sparsity) spec-sheet peaks in TFLOP/s: (bf16/fp16 tensor, tf32 tensor, fp32 SIMT).
# PyTorch runs fp32 convolutions on TF32 tensor cores by default (cudnn.allow_tf32), so
# the fp32 rows of the conv workloads are compared with the tf32 peak.
PEAK_TFLOPS = {
    "H100 PCIe": (756.0, 378.0, 51.2),
    "H100 NVL": (835.0, 418.0, 60.0),
    "H100": (989.4, 494.7, 66.9),  # SXM5 (reported as "NVIDIA H100 80GB HBM3")
    "H200": (989.4, 494.7, 66.9),  # SXM; same compute as the H100 SXM, more memory
}


def device_peak_tflops(device: torch.device, precision: str) -> tuple[str, float] | None:
    """(which peak, TFLOP/s) for the CUDA device and the precision its convs run in."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, (half, tf32, _fp32) in PEAK_TFLOPS.items():
        if key in name:
            if precision in ("bf16", "fp16"):
                return f"{key} dense bf16/fp16", half
            tf32_on = torch.backends.cudnn.allow_tf32
            return (f"{key} dense tf32", tf32) if tf32_on else (f"{key} fp32", _fp32)
    return None


def forward_flops_per_example(w: Workload) -> float:
    """Multiply-adds × 2 of one example's forward pass through the conv/linear layers."""
    a = w.arch
    if a.kind == "mlp":
        sizes = [math.prod(w.input_shape)] + [a.width] * a.depth + [w.outputs]
        return sum(2.0 * i * o for i, o in zip(sizes, sizes[1:]))
    channels, h, wd = w.input_shape
    flops = 0.0
    pool = a.downsample == "pool"
    for _ in range(a.blocks):
        h_out = h if pool else (h + 1) // 2
        w_out = wd if pool else (wd + 1) // 2
        flops += 2.0 * a.channels * channels * 9 * h_out * w_out
        channels = a.channels
        h, wd = ((h_out + 1) // 2, (w_out + 1) // 2) if pool else (h_out, w_out)
    return flops + 2.0 * channels * h * wd * w.outputs


def meta_iteration_flops(
    w: Workload, first_order: bool, second_order_steps: int | None = None, checkpoint: bool = False
) -> float:
    """Analytic conv+linear FLOPs of one meta-iteration (all tasks), norms/activations ignored.

    Per task, with F_s / F_q the support / query forward FLOPs: each inner step costs a
    forward and a backward (input and weight gradients) of the support set, 3·F_s; the
    query forward and backward cost 3·F_q; back-propagating through a second-order step
    costs the double backward of its support backward (each of its two products, 2·F_s,
    is differentiated in both operands: 4·F_s) plus the backward of its support forward
    (2·F_s): 6·F_s. A checkpointed step recomputes its 3·F_s once more. (The first layer's
    unneeded input gradient is counted too: under 2% of a conv4's FLOPs.)
    """
    f1 = forward_flops_per_example(w)
    f_s, f_q = w.support * f1, w.query * f1
    steps = w.inner_steps
    second = 0 if first_order else min(steps, steps if second_order_steps is None else second_order_steps)
    per_task = steps * 3 * f_s + 3 * f_q + second * 6 * f_s + (second * 3 * f_s if checkpoint else 0)
    return per_task * w.meta_batch


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workloads", default="sinusoid-1step,sinusoid-5step,conv4-5way-1shot")
    parser.add_argument("--orders", default="second,first")
    parser.add_argument("--strategies", default="vmap,loop,batched",
                        help="implementations: strategy[/cN][/bf16|/fp16][/ckpt], comma-separated")
    parser.add_argument("--task-chunk", default="0",
                        help="chunk size(s) for vmap/batched, comma-separated (each gets its own row)")
    parser.add_argument("--inner-steps", type=int, help="override every workload's inner steps")
    parser.add_argument("--meta-batch", type=int, help="override every workload's meta-batch")
    parser.add_argument("--second-order-steps", type=int,
                        help="engine: second order through the last N steps only")
    parser.add_argument("--checkpoint-inner", action="store_true", help="engine: checkpoint the inner steps")
    parser.add_argument("--seconds", type=float, default=20.0, help="timed seconds per workload and order")
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--memory", action="store_true", help="also measure peak memory per implementation")
    parser.add_argument("--no-cudnn-benchmark", action="store_true",
                        help="CUDA: leave cudnn.benchmark off (default: on, for every implementation)")
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not args.no_cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    chunks = [int(c) for c in args.task_chunk.split(",")]
    specs = []
    for text in args.strategies.split(","):
        strategy = text.split("/")[0]
        for chunk in chunks if strategy in ("vmap", "batched") and "/c" not in text else [0]:
            spec = Impl.parse(text, chunk, args.checkpoint_inner)
            if spec not in specs:
                specs.append(spec)
    rows = []
    meta = {"torch": torch.__version__, "argv": sys.argv, "device": str(device)}
    if device.type == "cuda":
        meta["device_name"] = torch.cuda.get_device_name(device)

    def save() -> None:  # after every workload and order, so a run cut short keeps its rows
        if args.json_path:
            with open(args.json_path, "w") as handle:
                json.dump({"rows": rows, **meta}, handle, indent=2)

    header = (f"{'workload':18} {'order':6} {'implementation':22} {'tasks/s':>10}  {'ratio':>7}"
              + ("  peak MiB" if args.memory else "") + "  TFLOP/s (share of peak)")
    print(header, flush=True)
    for workload in args.workloads.split(","):
        w = with_steps(WORKLOADS[workload], args.inner_steps, args.meta_batch)
        for order in args.orders.split(","):
            first_order = order == "first"
            algo = AlgoConfig(checkpoint_inner=args.checkpoint_inner)
            chosen = choose(w.arch, device, algo).strategy.name
            impls = [Impl("reference"), *specs]
            runners = {
                impl.name: make_runner(impl, w, first_order, device, args.second_order_steps)
                for impl in impls
            }
            rates = time_interleaved(runners, device, args.seconds, args.windows)
            for impl in impls:
                is_reference = impl.strategy == "reference"
                flops = meta_iteration_flops(
                    w, first_order, None if is_reference else args.second_order_steps,
                    impl.checkpoint,
                )
                row = {
                    "workload": workload, "order": order, "impl": impl.name, "strategy": impl.strategy,
                    "task_chunk": impl.chunk, "precision": impl.precision,
                    "checkpoint_inner": impl.checkpoint,
                    "second_order_steps": None if is_reference else args.second_order_steps,
                    "inner_steps": w.inner_steps,
                    "auto": impl.strategy == chosen and impl.chunk == 0 and impl.precision == "fp32",
                    "device": str(device), "meta_batch": w.meta_batch,
                    "tasks_per_sec": rates[impl.name] * w.meta_batch,
                    "ratio": rates[impl.name] / rates["reference"],
                    "flops_per_iteration": flops,
                    "tflops_per_sec": flops * rates[impl.name] / 1e12,
                }
                peak = device_peak_tflops(device, impl.precision)
                if peak is not None:
                    row["peak_name"], row["peak_tflops"] = peak
                    row["peak_share"] = row["tflops_per_sec"] / peak[1]
                if args.memory and device.type == "cuda":
                    row["peak_mb"] = peak_memory_cuda(
                        impl, w, first_order, device, row["second_order_steps"]
                    )
                elif args.memory:
                    row["peak_mb"] = peak_memory_mb(
                        impl, w, first_order, args.device, row["second_order_steps"]
                    )
                rows.append(row)
                label = impl.name + (" (auto)" if row["auto"] else "")
                memory = f"  {row['peak_mb']:8.0f}" if args.memory else ""
                share = f" ({100 * row['peak_share']:.2f}% of {row['peak_name']})" if peak else ""
                print(f"{workload:18} {order:6} {label:22} {row['tasks_per_sec']:10.1f}  "
                      f"{row['ratio']:6.2f}x{memory}  {row['tflops_per_sec']:.4f}{share}", flush=True)
            save()


if __name__ == "__main__":
    main()
