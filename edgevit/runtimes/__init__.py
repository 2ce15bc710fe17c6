"""One interface over every inference runtime.

``load(source, backend=None)`` returns a :class:`Runner`. ``source`` is an ``nn.Module`` or registry name
(torch backend) or an artifact path (a file, or a folder such as an OpenVINO IR) whose suffix picks the
backend unless ``backend`` is given. New backends (TensorRT) register themselves with
:func:`register_backend`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import ArtifactError, BackendUnavailableError, EdgevitError
from .base import Runner, RunnerInfo, TensorSpec


@dataclass(frozen=True)
class Backend:
    name: str
    module: str  # imported lazily: a missing optional package only matters when its backend is used
    factory: str
    suffixes: tuple[str, ...]
    package: str  # the pip package that provides the runtime


_BACKENDS: dict[str, Backend] = {}


def register_backend(backend: Backend) -> None:
    _BACKENDS[backend.name] = backend


register_backend(Backend("torch", "edgevit.runtimes.torch_backend", "TorchRunner", (), "torch"))
register_backend(Backend("onnxruntime", "edgevit.runtimes.onnxruntime_backend", "OnnxRuntimeRunner",
                         (".onnx",), "onnxruntime"))
register_backend(Backend("openvino", "edgevit.runtimes.openvino_backend", "OpenVinoRunner", (".xml",), "openvino"))
register_backend(Backend("executorch", "edgevit.runtimes.executorch_backend", "ExecuTorchRunner", (".pte",),
                         "edgevit[executorch]"))
register_backend(Backend("ort", "edgevit.runtimes.ort_format_backend", "OrtFormatRunner", (".ort",), "onnxruntime"))
register_backend(Backend("tensorrt", "edgevit.runtimes.tensorrt_backend", "TensorRTRunner", (".engine", ".plan"),
                         "edgevit[tensorrt]"))


def backends() -> list[str]:
    return list(_BACKENDS)


def _factory(name: str) -> Callable[..., Runner]:
    if name not in _BACKENDS:
        raise EdgevitError(f"unknown runtime {name!r}; choose one of {', '.join(_BACKENDS)}")
    b = _BACKENDS[name]
    try:
        module = importlib.import_module(b.module)
    except ImportError as exc:
        raise BackendUnavailableError(f"runtime {name!r} needs the {b.package!r} package: pip install {b.package}") from exc
    return getattr(module, b.factory)


def backend_for_path(path: Path) -> str:
    if path.is_dir():  # an artifact folder (OpenVINO IR): the backend of the one artifact file inside
        inside = {b.name for p in path.iterdir() for b in _BACKENDS.values() if p.suffix.lower() in b.suffixes}
        if len(inside) == 1:
            return inside.pop()
    for b in _BACKENDS.values():
        if path.suffix.lower() in b.suffixes:
            return b.name
    known = sorted({s for b in _BACKENDS.values() for s in b.suffixes})
    raise ArtifactError(f"cannot tell the runtime for {str(path)!r}; expected a file ending in {', '.join(known)} "
                        "or pass --runtime")


def check_counts(**counts: int | None) -> None:
    """``threads``/``streams`` given as options must be positive integers (``None``: the runtime's default);
    checked before any runtime is loaded so a typo costs nothing."""
    for name, value in counts.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise EdgevitError(f"--{name} must be a whole number of at least 1 (or left out for the default), "
                               f"got {value!r}")


def load(source: nn.Module | str | Path, backend: str | None = None, **options: Any) -> Runner:
    """Load a model or artifact into a runner; ``options`` go to the backend (e.g. ``threads``)."""
    check_counts(**{k: options[k] for k in ("threads", "streams") if k in options})
    if isinstance(source, nn.Module):
        return _factory(backend or "torch")(source, **options)
    path = Path(source)
    # a registry name such as "s2aformer-t" has no suffix and no folder part; anything else is a path
    looks_like_path = bool(path.suffix) or "/" in str(source) or "\\" in str(source) or path.exists()
    if backend is None and not looks_like_path:
        backend = "torch"
    if backend == "torch" and not path.suffix and not path.exists():
        return _factory("torch")(str(source), **options)
    if not path.exists():
        raise ArtifactError(f"no such file or folder {str(path)!r} (the artifact does not exist); export one with "
                            "`edgevit export`")
    return _factory(backend or backend_for_path(path))(path, **options)


__all__ = ["Backend", "Runner", "RunnerInfo", "TensorSpec", "backends", "load", "register_backend"]
