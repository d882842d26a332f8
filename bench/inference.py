"""Inference latency of MSA-Net per 256×256 view, beside a plain U-Net of the same widths.

For each device (CPU; CUDA when present), preset, model and batch size: forward passes under
``torch.inference_mode`` in eval mode (fp32 on CPU, bf16 autocast on CUDA — what
``msanet_core.Segmenter`` does), ms per view (best and median of ``--repeats``), FLOPs per view
from ``torch.utils.flop_counter`` (2 FLOP per MAC), and achieved GFLOP/s against a square-matmul
peak measured in the same run. Target (FACTS.md): ``paper`` ≤ 0.7 s per view on 2 CPU cores.

    python bench/inference.py                       # paper + lite, batch 1 and 8, all devices
    python bench/inference.py --presets lite --batches 1 --repeats 5 --layouts cl,nchw

On a shared machine run it with ``OMP_WAIT_POLICY=PASSIVE``: spin-waiting OpenMP threads that lose
their core to another process make 2-thread runs 3-10× slower (measured). The matmul peak is
measured before and after the model runs (the higher is kept) and the load average is printed:
a load above the core count means the numbers are contended.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from msanet_core import ModelConfig, build_generator, build_unet, count_parameters


@dataclass
class Row:
    device: str
    preset: str
    model: str
    layout: str
    batch: int
    params_m: float
    gflop_per_view: float
    best_ms_per_view: float
    median_ms_per_view: float
    gflops: float
    peak_fraction: float


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _best_and_median(fn: Callable[[], object], device: torch.device, repeats: int) -> list[float]:
    fn()  # warm-up (oneDNN / cuDNN algorithm selection)
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def matmul_peak(device: torch.device, repeats: int) -> float:
    """GFLOP/s of an n×n matmul (fp32 on CPU, bf16 on CUDA), best of many short runs.

    On CPU the peak is the higher of ``torch.matmul`` and a 3×3 convolution written as the same
    kind of dense product: MKL's sgemm takes an AVX2 path on AMD CPUs (about half the AVX-512
    rate oneDNN's convolutions reach), which would put the models above "100 % of peak".
    """
    if device.type == "cuda":
        a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
        b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
        return 2 * 8192**3 / min(_best_and_median(lambda: a @ b, device, 10)) / 1e9
    n = max(10 * repeats, 30)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    gemm = 2 * 1024**3 / min(_best_and_median(lambda: a @ b, device, n)) / 1e9
    x = torch.randn(1, 256, 64, 64).contiguous(memory_format=torch.channels_last)
    w = torch.randn(256, 256, 3, 3).contiguous(memory_format=torch.channels_last)

    def conv() -> torch.Tensor:
        with torch.inference_mode():
            return torch.nn.functional.conv2d(x, w, padding=1)

    direct = 2 * 64 * 64 * 256 * 256 * 9 / min(_best_and_median(conv, device, n)) / 1e9
    print(f"cpu: torch.matmul {gemm:.0f} GFLOP/s, oneDNN 3×3 conv {direct:.0f} GFLOP/s", flush=True)
    return max(gemm, direct)


def flop_per_view(model: nn.Module) -> float:
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(torch.rand(1, 1, 256, 256))
    return float(counter.get_total_flops())


def measure(
    model: nn.Module, device: torch.device, batch: int, layout: str, repeats: int
) -> list[float]:
    fmt = torch.channels_last if layout == "cl" else torch.contiguous_format
    model = model.to(device).to(memory_format=fmt).eval()  # type: ignore[call-overload]
    x = torch.rand(batch, 1, 256, 256, device=device).contiguous(memory_format=fmt)

    def run() -> object:
        with torch.inference_mode():
            if device.type == "cuda":
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    return model(x)
            return model(x)

    return [t / batch for t in _best_and_median(run, device, repeats)]


def bench(args: argparse.Namespace) -> list[Row]:
    devices = [torch.device("cpu")]
    if torch.cuda.is_available() and args.device in ("all", "cuda"):
        devices.append(torch.device("cuda"))
    if args.device == "cuda":
        devices = devices[1:]
    rows: list[Row] = []
    for device in devices:
        peak = matmul_peak(device, args.repeats)
        print(
            f"{device.type}: matmul peak {peak:.0f} GFLOP/s, {torch.get_num_threads()} threads, "
            f"load average {os.getloadavg()[0]:.1f}, "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}",
            flush=True,
        )
        first = len(rows)
        for preset in args.presets.split(","):
            config = ModelConfig.preset(preset)
            for kind, build in (("msanet", build_generator), ("unet", build_unet)):
                model = build(config).eval()
                flop = flop_per_view(model)
                for layout in args.layouts.split(","):
                    for batch in (int(b) for b in args.batches.split(",")):
                        times = measure(model, device, batch, layout, args.repeats)
                        best = min(times)
                        row = Row(device.type, preset, kind, layout, batch,
                                  count_parameters(model) / 1e6, flop / 1e9, best * 1e3,
                                  statistics.median(times) * 1e3, flop / best / 1e9,
                                  flop / best / 1e9 / peak)  # fmt: skip
                        rows.append(row)
                        print(_line(row), flush=True)
        after = matmul_peak(device, args.repeats)
        print(f"{device.type}: matmul peak after the runs {after:.0f} GFLOP/s", flush=True)
        if after > peak:  # keep the less contended measurement of the peak
            for row in rows[first:]:
                row.peak_fraction *= peak / after
    return rows


HEADER = (f"{'device':6} {'preset':6} {'model':6} {'layout':6} {'batch':>5} {'params M':>8} "
          f"{'GFLOP':>7} {'best ms':>9} {'median ms':>9} {'GFLOP/s':>8} {'% peak':>6}")  # fmt: skip


def _line(r: Row) -> str:
    return (f"{r.device:6} {r.preset:6} {r.model:6} {r.layout:6} {r.batch:5d} {r.params_m:8.2f} "
            f"{r.gflop_per_view:7.1f} {r.best_ms_per_view:9.1f} {r.median_ms_per_view:9.1f} "
            f"{r.gflops:8.1f} {100 * r.peak_fraction:6.1f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="paper,lite")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--layouts", default="cl", help="cl (channels_last) and/or nchw")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", choices=("all", "cpu", "cuda"), default="all")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(HEADER)
    rows = bench(args)
    print("\nper 256×256 view (ms per view = batch time / batch):")
    print(HEADER)
    for r in rows:
        print(_line(r))
    paper_cpu = [r for r in rows if (r.device, r.preset, r.model) == ("cpu", "paper", "msanet")]
    if paper_cpu:
        best = min(r.best_ms_per_view for r in paper_cpu)
        verdict = "meets" if best <= 700 else "misses"
        print(f"\npaper on CPU: {best:.0f} ms per view — {verdict} the 0.7 s target")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump([asdict(r) for r in rows], handle, indent=1)


if __name__ == "__main__":
    main()
