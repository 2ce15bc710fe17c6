"""Margins of a model's data-dependent sign decisions, recorded only when asked for (by verification).

Why: DualFormer assigns every token to a group by the signs of ``beta . x``. Where such a value is within
float rounding of zero, two correct implementations with different summation orders (PyTorch, XNNPACK)
decide differently, and on a flat frame the same decision repeats for every interior token, so the outputs
then differ by far more than rounding. Measured: dualformer-t at 224, grey frame 1.0, relative margin 3.7e-7
in block 7; its ExecuTorch program was 4.4e-4 from PyTorch on that frame and within 1e-6 elsewhere.
Verification reads the margins to avoid frames whose outcome rounding decides (``edgevit.verify``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import Tensor

_MARGINS: ContextVar[list[Tensor] | None] = ContextVar("edgevit_decision_margins", default=None)


@contextmanager
def recording_decision_margins() -> Iterator[list[Tensor]]:
    """Collect, for the forward passes run inside, one ``(B,)`` tensor per decision layer and call."""
    margins: list[Tensor] = []
    token = _MARGINS.set(margins)
    try:
        yield margins
    finally:
        _MARGINS.reset(token)


def recording() -> bool:
    """Whether margins are being collected; never under torch.compile (dynamo cannot trace a ContextVar,
    and verification runs the eager model)."""
    return not torch.compiler.is_dynamo_compiling() and _MARGINS.get() is not None


def note_decision_margins(value: Tensor, scale: Tensor) -> None:
    """Record the smallest ``|value| / scale`` per image (dim 0) of one decision layer; no-op unless
    :func:`recording_decision_margins` is active (never while exporting)."""
    margins = _MARGINS.get()
    if margins is None:
        return
    rel = (value.detach().float().abs() / scale.detach().float().clamp_min(torch.finfo(torch.float32).tiny))
    margins.append(rel.reshape(rel.shape[0], -1).amin(dim=1).cpu())
