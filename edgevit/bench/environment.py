"""What machine and libraries a benchmark ran on, so a number is never reported without its context."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path

from . import uarch

# ISA extensions that decide which kernels oneDNN/MLAS/OpenVINO pick (and thus the precision they may use).
INTERESTING_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
                     "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve")
LIBRARIES = ("edgevit", "torch", "numpy", "onnx", "onnxruntime", "onnxslim", "openvino", "tensorrt")


def cpu_model() -> str:
    return uarch.read_cpuid().model_name or platform.processor() or platform.machine()


def isa_flags() -> list[str]:
    flags = uarch.read_cpuid().flags
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
        "microarchitecture": getattr(uarch.lookup(uarch.read_cpuid()), "name", "not in edgevit's table"),
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
