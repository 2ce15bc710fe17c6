"""Memory estimates that let a request be refused before it allocates what the machine does not have.

Why an estimate and not a try: a CPU allocation larger than RAM is usually not refused by the kernel
(overcommit); the process is OOM-killed minutes later without a message. The estimate is a lower bound
(the input plus the model's largest single activation, measured per pixel on a small probe input and
scaled to the requested size), so it never refuses a request that would fit.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from .errors import ResourceLimitError

# Activations of the zoo's backbones are a few times their input per pixel (s2aformer-mini: 32 B/px against
# 12 B/px of fp32 RGB); below 1/ACTIVATION_HEADROOM of the available RAM the probe forward is not worth running.
ACTIVATION_HEADROOM = 64


def available_memory_bytes() -> int:
    """RAM a new allocation can get now: ``MemAvailable``, capped by a cgroup v2 limit when one is set
    (a container's limit, not the host's free RAM, is what gets a process killed); total RAM where /proc
    is missing."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    if avail is None:
        avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read())
        if limit != "max":
            avail = min(avail, int(limit) - used)
    except (OSError, ValueError):
        pass
    return avail


@torch.no_grad()
def largest_activation_per_pixel(model: nn.Module, probe: tuple[int, int]) -> float:
    """Bytes of the largest tensor any submodule outputs, per input pixel, on one ``probe``-sized image."""
    largest = [0]

    def hook(_module: nn.Module, _inputs: object, output: object) -> None:
        tensors = output if isinstance(output, (tuple, list)) else (output,)
        for t in tensors:
            if isinstance(t, torch.Tensor):
                largest[0] = max(largest[0], t.numel() * t.element_size())

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    was_training = model.training
    try:
        model.eval()
        model(torch.zeros(1, 3, *probe))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return largest[0] / (probe[0] * probe[1])


def estimate_forward_bytes(model: nn.Module, input_size: tuple[int, int], batch: int,
                           probe: tuple[int, int]) -> int:
    """Lower bound of the memory one forward pass at ``batch x 3 x input_size`` needs (fp32)."""
    pixels = batch * input_size[0] * input_size[1]
    return int(pixels * (3 * 4 + largest_activation_per_pixel(model, probe)))


def check_forward_fits(model: nn.Module, name: str, input_size: tuple[int, int], batch: int,
                       probe: tuple[int, int], available: int | None = None) -> int:
    """Refuse (:class:`ResourceLimitError`) a forward pass that cannot fit in the available RAM."""
    available = available_memory_bytes() if available is None else available
    input_bytes = batch * 3 * input_size[0] * input_size[1] * 4
    if input_bytes * ACTIVATION_HEADROOM < available:
        return input_bytes  # far from the limit: not worth a probe forward
    need = input_bytes if input_bytes > available else estimate_forward_bytes(model, input_size, batch, probe)
    if need > available:
        raise ResourceLimitError(
            f"{name} at {input_size[0]}x{input_size[1]}, batch {batch} needs at least {need / 2**30:.1f} GiB "
            f"(the input and its largest activation), but {available / 2**30:.1f} GiB of RAM is available; use a "
            "smaller --input-size or --batch")
    return need
