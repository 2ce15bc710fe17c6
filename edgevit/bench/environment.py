"""What machine and libraries a benchmark ran on, so a number is never reported without its context."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from dataclasses import dataclass
from pathlib import Path

# ISA extensions that decide which kernels oneDNN/MLAS/OpenVINO pick (and thus the precision they may use).
INTERESTING_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
                     "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve")
LIBRARIES = ("edgevit", "torch", "numpy", "onnx", "onnxruntime", "onnxslim", "openvino", "tensorrt")


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if ":" in line:
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return info


def cpu_model() -> str:
    info = _cpuinfo()
    return info.get("model name") or info.get("Model") or platform.processor() or platform.machine()


def isa_flags() -> list[str]:
    flags = set(_cpuinfo().get("flags", _cpuinfo().get("Features", "")).split())
    return [f for f in INTERESTING_FLAGS if f in flags]


def library_versions() -> dict[str, str]:
    out = {}
    for lib in LIBRARIES:
        try:
            out[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def logical_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def collect() -> dict[str, object]:
    """Environment record stored with every benchmark result."""
    import torch

    env: dict[str, object] = {
        "cpu_model": cpu_model(),
        "isa_flags": isa_flags(),
        "logical_cores": logical_cores(),
        "machine": platform.machine(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "libraries": library_versions(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["cuda"] = torch.version.cuda
    return env


def physical_cores() -> int:
    """Cores (not SMT siblings) among the CPUs this process may use; logical count if unknown."""
    allowed = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    cores: set[tuple[str, str]] = set()
    cpu = phys = core = None
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines() + [""]
    except OSError:
        return logical_cores()
    for line in lines:
        key, _, value = (s.strip() for s in line.partition(":"))
        if key == "processor":
            cpu = int(value)
        elif key == "physical id":
            phys = value
        elif key == "core id":
            core = value
        elif not line.strip() and cpu is not None:
            if (allowed is None or cpu in allowed) and core is not None:
                cores.add((phys or "0", core))
            cpu = phys = core = None
    return len(cores) or logical_cores()


def cpu_frequency_ghz() -> tuple[float, str]:
    """Maximum (turbo) frequency if the kernel exposes it, else the current one from /proc/cpuinfo."""
    try:
        khz = int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text())
        return khz / 1e6, "cpuinfo_max_freq"
    except (OSError, ValueError):
        pass
    mhz = _cpuinfo().get("cpu MHz")
    if mhz:
        return float(mhz) / 1e3, "/proc/cpuinfo cpu MHz (current, not turbo)"
    return 2.0, "unknown, 2.0 GHz assumed"


# Multiply-accumulates per cycle per core of the widest unit for each precision, assuming two FMA ports
# (server Xeon/EPYC Zen4+; client cores with one 512-bit port reach half of the AVX-512 figure).
_MACS_PER_CYCLE: dict[str, list[tuple[str, int, str]]] = {
    "fp32": [("avx512f", 32, "AVX-512: 2 FMA x 16 fp32"), ("avx2", 16, "AVX2+FMA: 2 FMA x 8 fp32"),
             ("asimd", 8, "NEON: 2 FMA x 4 fp32"), ("sse4_2", 4, "SSE: 4 fp32")],
    "bf16": [("amx_bf16", 512, "AMX-BF16: 1024 bf16 FLOP/cycle"),
             ("avx512_bf16", 64, "AVX512-BF16: 2 x 32 bf16 pairs")],
    "int8": [("amx_int8", 1024, "AMX-INT8: 2048 int8 OP/cycle"), ("avx512_vnni", 128, "AVX512-VNNI: 2 x 64 int8"),
             ("avx2", 32, "AVX2: 2 x 16 int8 (pmaddubsw)")],
}


@dataclass(frozen=True)
class PeakEstimate:
    gmacs_per_s: float
    assumption: str


def cpu_peak(precision: str, threads: int) -> PeakEstimate:
    """Theoretical peak GMAC/s of the cores a run used; bf16/fp16/int8 fall back to the fp32 unit when the
    CPU has no dedicated instructions for them (that is what the runtime then really executes)."""
    flags = set(isa_flags())
    cores = min(threads, physical_cores())
    ghz, freq_source = cpu_frequency_ghz()
    key = {"f32": "fp32", "fp32": "fp32", "bf16": "bf16", "int8": "int8"}.get(precision.lower(), "fp32")
    for table in ([key, "fp32"] if key != "fp32" else ["fp32"]):
        for flag, macs, why in _MACS_PER_CYCLE[table]:
            if flag in flags:
                peak = cores * ghz * macs
                return PeakEstimate(peak, f"{cores} cores x {ghz:.2f} GHz ({freq_source}) x {macs} {table} "
                                          f"MAC/cycle ({why})")
    return PeakEstimate(cores * ghz * 1, f"{cores} cores x {ghz:.2f} GHz x 1 MAC/cycle (no SIMD detected)")
