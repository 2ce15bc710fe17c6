"""Flush-to-zero / denormals-are-zero for the thread that calls a runtime.

Why: a masked softmax (logit ``-inf`` outside a window, as in edgevit's tiled neighbourhood attention) makes
ONNX Runtime's MLAS kernels write subnormal floats: its exp clamps ``x - max`` at about -88.4, whose exp
(~4e-39) lies below the smallest normal float (1.2e-38). Intel cores take a microcode assist on every
subnormal operand or result; AMD Zen 4 barely notices. Measured on a 2-core Xeon (AMX, AVX-512), 1 thread:
ORT Softmax over 16x1x64x49x289 logits with 83 % masked entries 43.8 ms against 8.6 ms unmasked; with the
calling thread's FTZ/DAZ bits set, 8.8 ms. a2mamba-n at batch 16 / 224 ran 1.08 s -> 0.82 s per call.

ONNX Runtime's ``session.set_denormal_as_zero`` sets the bits on its intra-op pool threads only; the calling
thread also runs kernels (all of them at one thread), so its bits are set here for the duration of a call
and restored after it. The effect on results is nil at fp32 inference scales: only values below 1.2e-38
change, to 0. OpenVINO's CPU kernels and PyTorch's were measured unaffected (a2mamba-n 0.71 / 1.29-1.34 s
with or without), so they are left alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

_SUBNORMAL = np.full(16, 1e-39, dtype=np.float32)  # 16 lanes: numpy's SIMD loop, not a scalar fallback


def caller_flushes_denormals() -> bool:
    """Whether the calling thread's FPU flushes subnormals (DAZ: a subnormal operand reads as 0).

    Probed with an operation rather than read from the control register: Python cannot read MXCSR (or
    AArch64's FPCR) directly, and numpy's SIMD arithmetic obeys the same bits as the runtimes' kernels."""
    return bool((_SUBNORMAL * np.float32(0.5))[0] == 0.0)


@contextmanager
def caller_denormals(flush: bool | None) -> Iterator[bool]:
    """Run the block with the calling thread flushing subnormals (``flush=True``), not flushing (``False``) or
    as it is (``None``), and put the thread's bits back as they were after it; yields whether the thread
    flushes inside. A CPU without the bits is left untouched.

    ``None`` is for calls that may change the bits themselves: ONNX Runtime's session constructor, given
    ``session.set_denormal_as_zero``, sets them on the thread that builds the session and leaves them set.

    ``torch.set_flush_denormal`` is the one portable setter reachable from Python (x86 SSE MXCSR, AArch64
    FPCR; it sets or clears FTZ and DAZ together); torch is already a dependency of every edgevit install."""
    import torch

    before = caller_flushes_denormals()
    if flush is not None and flush != before:
        torch.set_flush_denormal(flush)
    try:
        yield caller_flushes_denormals()
    finally:
        if caller_flushes_denormals() != before:
            torch.set_flush_denormal(before)
