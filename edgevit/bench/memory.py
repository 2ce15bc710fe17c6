"""Peak memory of a benchmark case: process RSS on CPU (the kernel's high-water mark, reset per case; sampled
where it cannot be reset), max allocated on CUDA."""

from __future__ import annotations

import os
import threading
from types import TracebackType

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def current_rss_bytes() -> int:
    """Resident set size now (Linux /proc; falls back to the lifetime peak elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def release_freed_memory() -> bool:
    """Collect garbage and hand the C heap's free pages back to the OS (glibc ``malloc_trim``); True if trimmed.

    Why: glibc keeps freed heap resident, so without this a case's peak RSS also holds what the previous case
    freed (Table VIII protocol, session 12: A2Mamba-N's 1024 cell peaked 1.6 GB above its own growth in one
    process). Trimming before each case makes its peak its own. A no-op where glibc is absent.
    """
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        trim = None
    if trim is None:
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)
    return True


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (``VmHWM``) to the current RSS; False where Linux does not allow
    it (``/proc/self/clear_refs`` value 5, Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return peak_rss_bytes() is not None
    except OSError:
        return False


def peak_rss_bytes() -> int | None:
    """The kernel's RSS high-water mark (``VmHWM``) since the process started or the last reset; None if
    unknown."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class PeakRssSampler:
    """The process's peak RSS while a case runs, and its RSS before.

    Where Linux lets a process reset its RSS high-water mark, the peak is that mark, reset on entry: exact,
    and nothing runs beside the measured call. A sampling thread (every 5 ms) is the fallback: on 2 cores with
    both busy in the runtime its wake-ups slowed ONNX Runtime and OpenVINO calls by ~5 % (a2mamba-n, batch
    16, calls alternating with and without it), and it can miss a spike shorter than its interval.
    (``ru_maxrss`` is a lifetime maximum and cannot separate cases run in one process.)
    """

    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval_s = interval_s
        self.baseline = 0
        self.peak = 0
        self.sampled = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, current_rss_bytes())

    def __enter__(self) -> PeakRssSampler:
        self.baseline = self.peak = current_rss_bytes()
        if not reset_peak_rss():
            self.sampled = True
            self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.sampled:
            self._stop.set()
            self._thread.join()
        else:
            self.peak = max(self.peak, peak_rss_bytes() or 0)
        self.peak = max(self.peak, current_rss_bytes())


# Live tensors at the worst point of a forward pass, in units of the largest activation: the op's input and
# output, a residual kept alive across the block, and the runtime's scratch (arenas, im2col/reorder buffers).
# Calibrated against the observation: s2aformer-t at batch 3000 had passed 21 GB RSS when it was killed,
# i.e. >= 7 MB per image; this estimate gives 10 MB per image (largest activation 2.4 MB).
LIVE_ACTIVATIONS = 4


def estimate_case_bytes(weights_bytes: int, activation_bytes: int,
                        input_size: tuple[int, int]) -> tuple[int, int]:
    """Memory one benchmark case needs as (fixed, per image): two copies of the weights (PyTorch model +
    runtime), and per image the input plus :data:`LIVE_ACTIVATIONS` of the largest activation."""
    return 2 * weights_bytes, 3 * input_size[0] * input_size[1] * 4 + LIVE_ACTIVATIONS * activation_bytes
