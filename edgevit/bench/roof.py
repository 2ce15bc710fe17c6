"""A measured roof: what a plain GEMM reaches on this machine, per precision, with the benchmark's threads.

Why measure: the theoretical peak (``uarch``) assumes every core sustains its FMA units at a known clock; VMs,
power limits, SMT siblings and neighbours make that optimistic by unknown factors. A short GEMM in the same
libraries the runtimes use (oneDNN through torch, MLAS through ONNX Runtime) gives the roof a model could
reach, so "% of measured GEMM roof" says how much of the achievable machine a network uses.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from . import environment, uarch

GEMM_SIZE = 1024  # large enough to be compute-bound (a 1024^3 GEMM is 1.07 GMAC), small enough for ~0.1 s calls

# Which ISA flags make a precision worth probing (without them the library emulates it: not a roof).
PROBE_FLAGS = {"fp32": ("fma", "asimd"), "bf16": ("avx512_bf16", "amx_bf16"), "fp16": ("avx512_fp16", "amx_fp16"),
               "int8": ("avx512_vnni", "avx_vnni", "amx_int8")}


@dataclass(frozen=True)
class RoofProbe:
    precision: str
    gmacs_per_s: float | None
    library: str
    threads: int
    theoretical: uarch.TheoreticalPeak
    error: str | None = None

    @property
    def fraction_of_theory(self) -> float | None:
        t = self.theoretical.gmacs_per_s
        return self.gmacs_per_s / t if self.gmacs_per_s and t else None

    def to_dict(self) -> dict[str, object]:
        return {"gmacs_per_s": self.gmacs_per_s, "library": self.library, "threads": self.threads,
                "gemm": f"{GEMM_SIZE}x{GEMM_SIZE}x{GEMM_SIZE}", "theoretical": self.theoretical.to_dict(),
                "fraction_of_theoretical": self.fraction_of_theory, "error": self.error}


def _best_rate(call: Callable[[], object], work: float, seconds: float) -> float:
    """``work`` units (MACs, bytes) per ns, i.e. G/s, of the fastest of three timed bursts (a roof is what the
    library *can* reach)."""
    call()  # first call pays packing/JIT
    best = 0.0
    for _ in range(3):
        n, t0 = 0, time.perf_counter()
        while n < 2 or time.perf_counter() - t0 < seconds / 3:
            call()
            n += 1
        best = max(best, n * work / (time.perf_counter() - t0) / 1e9)
    return best


def _torch_gemm(precision: str, threads: int) -> tuple[Callable[[], object], str]:
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    g = torch.Generator().manual_seed(0)
    a = torch.randn(GEMM_SIZE, GEMM_SIZE, generator=g).to(dtype)
    b = torch.randn(GEMM_SIZE, GEMM_SIZE, generator=g).to(dtype)
    return (lambda: torch.mm(a, b)), f"torch {torch.__version__} torch.mm {precision}"


def _ort_int8_gemm(threads: int) -> tuple[Callable[[], object], str]:
    """uint8 x int8 -> int32 ``MatMulInteger`` in ONNX Runtime (MLAS uses VNNI/AMX where present)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    n = GEMM_SIZE
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "roof",
                              [helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n]),
                               helper.make_tensor_value_info("b", TensorProto.INT8, [n, n])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, [n, n])])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
                                   .SerializeToString(), opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {"a": rng.integers(0, 255, (n, n), dtype=np.uint8), "b": rng.integers(-128, 127, (n, n), dtype=np.int8)}
    return (lambda: session.run(None, feeds)), f"onnxruntime {ort.__version__} MatMulInteger u8s8"


def probe_precisions(flags: set[str] | None = None) -> list[str]:
    """fp32 always; bf16/fp16/int8 only where the ISA has a unit for them."""
    flags = flags if flags is not None else set(uarch.read_cpuid().flags)
    return [p for p in uarch.PRECISIONS if p == "fp32" or any(f in flags for f in PROBE_FLAGS[p])]


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """PyTorch's thread count is process-wide: set it for a measurement and restore it after."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def measure_roof(threads: int, precisions: list[str] | None = None, seconds: float = 0.3) -> dict[str, RoofProbe]:
    """One GEMM probe per precision, run with ``threads`` (torch's process-wide count is restored)."""
    cpu = uarch.read_cpuid()
    cores = min(threads, environment.physical_cores())
    out: dict[str, RoofProbe] = {}
    with torch_threads(threads):
        for p in precisions or probe_precisions(set(cpu.flags)):
            theory = uarch.theoretical_peak(p, cores, cpu)
            try:
                call, library = _ort_int8_gemm(threads) if p == "int8" else _torch_gemm(p, threads)
                out[p] = RoofProbe(p, _best_rate(call, float(GEMM_SIZE) ** 3, seconds), library, threads, theory)
            except (RuntimeError, ImportError, ValueError) as exc:
                out[p] = RoofProbe(p, None, "", threads, theory, (str(exc).splitlines() or ["failed"])[0])
    return out


# Array sizes (MiB, per operand) of the bandwidth probe: from L2-resident to DRAM-streaming.
BANDWIDTH_SIZES_MIB = (0.25, 1.0, 4.0, 16.0, 64.0, 256.0)


@dataclass(frozen=True)
class BandwidthPoint:
    """What a plain fp32 ``c = a + b`` streams at one array size: the best an element-wise kernel can do
    there (reads 2 and writes 1 array per element), the memory roof of ops that do little arithmetic."""

    mib: float
    gb_per_s: float


def measure_bandwidth(threads: int, sizes_mib: tuple[float, ...] = BANDWIDTH_SIZES_MIB,
                      seconds: float = 0.15) -> list[BandwidthPoint]:
    """The memory roof per working-set size, with ``threads`` (torch's process-wide count is restored).

    Why a curve, not one number: a tensor of a few MiB stays in cache and moves several times faster than a
    DRAM stream, so the floor of an op must use the bandwidth of its own size (see :func:`bandwidth_at`).
    """
    import torch

    points = []
    with torch_threads(threads):
        for mib in sizes_mib:
            n = int(mib * 2**20) // 4
            a, b, c = torch.ones(n), torch.ones(n), torch.empty(n)
            rate = _best_rate(functools.partial(torch.add, a, b, out=c), 3.0 * 4 * n, seconds)
            points.append(BandwidthPoint(mib, rate))
    return points


def bandwidth_at(points: list[BandwidthPoint], bytes_per_operand: float) -> float:
    """GB/s of the smallest probe at least as large as the operand (the largest probe beyond it)."""
    fitting = [p for p in points if p.mib * 2**20 >= bytes_per_operand]
    return (min(fitting, key=lambda p: p.mib) if fitting else max(points, key=lambda p: p.mib)).gb_per_s


def roof_precision(runtime_precision: str | None) -> str:
    """The probe a row is compared with: 'int8+bf16' (OpenVINO int8 IR) -> int8, 'f32' -> fp32, ..."""
    p = (runtime_precision or "fp32").lower()
    if p.startswith("int8"):
        return "int8"
    return {"f32": "fp32", "f16": "fp16"}.get(p, p if p in uarch.PRECISIONS else "fp32")
