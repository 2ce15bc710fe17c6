"""Index tables and masks computed in NumPy, handed to the graph as constant tensors.

Eager code wraps the NumPy buffers (zero copy). While tracing (``torch.compile`` / ``torch.export``) the
tables are built outside the trace (``torch.compiler.assume_constant_result``) as Python lists and turned
into tensors with ``torch.tensor``: dynamo neither traces the NumPy code nor meets a ``torch.from_numpy``
tensor created inside the traced frame (on which it cannot guard: "dispatch key set mismatch"), and
``torch.export`` records each table as a constant (an ONNX initializer).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

TableBuilder = Callable[..., tuple[np.ndarray, ...]]
_BUILDERS: dict[str, TableBuilder] = {}


def table_builder(name: str) -> Callable[[TableBuilder], TableBuilder]:
    """Register a pure (cached) function returning a tuple of arrays under ``name``; dynamo needs the
    name, a constant, because it cannot pass a function into ``assume_constant_result``."""
    def register(fn: TableBuilder) -> TableBuilder:
        _BUILDERS[name] = fn
        return fn
    return register


def tracing() -> bool:
    """True inside ``torch.compile`` or ``torch.export`` tracing."""
    return torch.compiler.is_compiling() or torch.compiler.is_exporting()


@torch.compiler.assume_constant_result
def _as_lists(name: str, args: tuple[object, ...]) -> tuple[list, ...]:
    return tuple(np.asarray(a).tolist() for a in _BUILDERS[name](*args))


def constant_tables(name: str, args: tuple[object, ...], dtypes: Sequence[torch.dtype],
                    device: torch.device | str = "cpu") -> list[Tensor]:
    """The arrays of the builder ``name`` (see :func:`table_builder`) at ``args`` as tensors of
    ``dtypes`` on ``device``."""
    if tracing():
        return [torch.tensor(a, dtype=dt, device=device) for a, dt in zip(_as_lists(name, args), dtypes)]
    return [torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=dt)
            for a, dt in zip(_BUILDERS[name](*args), dtypes)]
