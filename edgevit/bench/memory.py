"""Peak memory of a benchmark case: process RSS on CPU (sampled), max allocated on CUDA."""

from __future__ import annotations

import os
import threading
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def current_rss_bytes() -> int:
    """Resident set size now (Linux /proc; falls back to the lifetime peak elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakRssSampler:
    """Samples RSS in a background thread while a case runs.

    ``ru_maxrss`` is a lifetime maximum and cannot separate cases run in one process; sampling every few
    milliseconds gives the peak during the case (and the baseline before it) at negligible cost.
    """

    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval_s = interval_s
        self.baseline = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, current_rss_bytes())

    def __enter__(self) -> PeakRssSampler:
        self.baseline = self.peak = current_rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss_bytes())


def available_ram_bytes() -> int | None:
    """RAM this process may still take: MemAvailable, capped by a cgroup v2 limit when one is set."""
    avail = None
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except OSError:
        return None
    try:
        limit = open("/sys/fs/cgroup/memory.max").read().strip()
        used = int(open("/sys/fs/cgroup/memory.current").read())
        if limit != "max" and avail is not None:
            avail = min(avail, int(limit) - used)
    except (OSError, ValueError):
        pass
    return avail


# Live tensors at the worst point of a forward pass, in units of the largest activation: the op's input and
# output, a residual kept alive across the block, and the runtime's scratch (arenas, im2col/reorder buffers).
# Calibrated against the observation: s2aformer-t at batch 3000 had passed 21 GB RSS when it was killed,
# i.e. >= 7 MB per image; this estimate gives 10 MB per image (largest activation 2.4 MB).
LIVE_ACTIVATIONS = 4


def largest_activation_bytes(model: "torch.nn.Module", input_size: tuple[int, int]) -> int:
    """Bytes of the largest tensor any leaf module produces for one fp32 image (a batch-1 forward pass)."""
    import torch

    largest = 0

    def hook(_m: object, _inp: object, out: object) -> None:
        nonlocal largest
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                largest = max(largest, t.numel() * t.element_size())

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.inference_mode():
            model.eval()(torch.zeros(1, 3, *input_size))
    finally:
        for h in handles:
            h.remove()
    return largest


def estimate_case_bytes(weights_bytes: int, activation_bytes: int,
                        input_size: tuple[int, int]) -> tuple[int, int]:
    """Memory one benchmark case needs as (fixed, per image): two copies of the weights (PyTorch model +
    runtime), and per image the input plus :data:`LIVE_ACTIVATIONS` of the largest activation."""
    return 2 * weights_bytes, 3 * input_size[0] * input_size[1] * 4 + LIVE_ACTIVATIONS * activation_bytes
