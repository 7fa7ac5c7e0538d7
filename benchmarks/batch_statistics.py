"""Time and float32 error of the ways to compute batch-norm statistics on the CPU.

The input is what the first block of Finn et al.'s conv4 sees in a 5-way 1-shot query
pass: 75 drawings (real Omniglot from the shared small set when it is there, else
synthetic strokes), 64 filters, a 28×28 channels-last conv output. Each formulation's
per-channel mean (error relative to the standard deviation) and variance (relative
error) are compared with float64, with the median time of repeated calls beside them;
then the first block's 3×3 patch moments in float32 and in float64 (``core/batched.py``).

    python benchmarks/batch_statistics.py [--repeat 50]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from _cases import cases  # first: puts this checkout first on sys.path

from maml_tune.core.batched import channels_last
from maml_tune.core.fused import conv_patches, patch_moments
from maml_tune.core.nets import batch_statistics


def timed(fn, repeat: int) -> tuple[float, object]:
    result = fn()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3, result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    real = cases.OMNIGLOT_ARCHIVE.is_file()
    images = (cases.omniglot_images if real else cases.stroke_images)(75, 28, 0).float()
    x = channels_last(images)
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 64, 3, padding=1)
    y = F.conv2d(x, conv.weight.detach(), conv.bias.detach(), padding=1)
    want_var, want_mean = torch.var_mean(y.double(), dim=(0, 2, 3), unbiased=False)
    source = "real Omniglot" if real else "synthetic strokes"
    print(f"{source}: conv output {tuple(y.shape)}, channels-last, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    def batch_norm_kernel():
        mean, var = torch.batch_norm_update_stats(y, None, None, 0.0)
        return var, mean

    y_default = y.contiguous()
    candidates = {
        "batch_norm_update_stats": batch_norm_kernel,
        "torch.var_mean (Welford)": lambda: torch.var_mean(y, dim=(0, 2, 3), unbiased=False),
        "two-pass (nets.batch_statistics)": lambda: batch_statistics(y),
        "two-pass, default layout": lambda: batch_statistics(y_default),
    }
    print(f"{'statistics':34} {'ms':>7} {'mean err / std':>15} {'var rel err':>12}")
    for name, fn in candidates.items():
        ms, (var, mean) = timed(fn, args.repeat)
        mean_err = ((mean.double() - want_mean) / want_var.sqrt()).abs().max().item()
        var_err = ((var.double() - want_var) / want_var).abs().max().item()
        print(f"{name:34} {ms:7.2f} {mean_err:15.1e} {var_err:12.1e}")

    patches = conv_patches(x, conv)
    _, exact_cov = patch_moments(patches)

    def float32_moments():
        mean = patches.mean(dim=0)
        centred = patches - mean
        return mean, centred.t() @ centred / patches.shape[0]

    print(f"{'patch moments (' + str(tuple(patches.shape)) + ')':34} {'ms':>7} {'cov rel err':>15}")
    ms, (_, cov) = timed(float32_moments, args.repeat)
    err = ((cov.double() - exact_cov).abs().max() / exact_cov.abs().max()).item()
    print(f"{'float32':34} {ms:7.2f} {err:15.1e}")
    ms, _ = timed(lambda: patch_moments(patches), args.repeat)
    print(f"{'float64 (core/batched.py)':34} {ms:7.2f} {'(reference)':>15}")


if __name__ == "__main__":
    main()
