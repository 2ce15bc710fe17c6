"""High-level operations shared by the CLI and the Python API: export -> verify, and artifact caching.

This is the one place that ties models, exporters and runtimes together, so the lower layers keep a
one-way dependency (model -> exporter -> artifact -> runtime -> verify/bench).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from . import __version__, runtimes
from .artifact import ArtifactMetadata, atomic_output
from .errors import ArtifactError, EdgevitError, InputShapeError, VerificationError
from .models import create_model, get_model_card, resolve_name
from .models.registry import ModelCard
from .verify import ParityReport, verify_runner

FORMATS = ("onnx",)
DEFAULT_VERIFY_BATCH = 2


def parse_input_size(value: int | str | tuple[int, int] | None, card: ModelCard) -> tuple[int, int]:
    """``224``, ``"224"``, ``"256x320"`` or ``(256, 320)`` -> (H, W), checked against the model's constraints."""
    if value is None:
        return card.input_size
    if isinstance(value, tuple):
        h, w = value
    elif isinstance(value, int):
        h = w = value
    else:
        m = re.fullmatch(r"\s*(\d+)\s*(?:[x,X*]\s*(\d+))?\s*", value)
        if not m:
            raise InputShapeError(f"cannot read input size {value!r}; write e.g. 224 or 256x320 (HxW)")
        h = int(m.group(1))
        w = int(m.group(2) or m.group(1))
    mult, lo = card.input_multiple, card.min_input_size
    if h < lo or w < lo or h % mult or w % mult:
        up = lambda v: max(lo, -(-v // mult) * mult)  # noqa: E731
        raise InputShapeError(f"{card.name} needs an input size that is a multiple of {mult} and at least {lo}, "
                              f"got {h}x{w}; try --input-size {up(h)}x{up(w)}")
    return h, w


def artifact_stem(name: str, input_size: tuple[int, int], batch: int | None, features_only: bool) -> str:
    b = "bdyn" if batch is None else f"b{batch}"
    return f"{name}-{input_size[0]}x{input_size[1]}-{b}" + ("-features" if features_only else "")


@dataclass(frozen=True)
class ExportReport:
    path: Path
    metadata: ArtifactMetadata
    seconds: float
    size_bytes: int
    parity: ParityReport | None


def build_model(name: str, weights: str | None = None, features_only: bool = False, seed: int = 0) -> nn.Module:
    return create_model(name, weights=weights, features_only=features_only, seed=seed)


def export(
    name: str,
    to: str = "onnx",
    output: str | Path | None = None,
    *,
    input_size: int | str | tuple[int, int] | None = None,
    batch: int = 1,
    dynamic_batch: bool = False,
    opset: int | None = None,
    simplify: bool = True,
    weights: str | None = None,
    features_only: bool = False,
    verify: bool = True,
    atol: float = 0.0,
    rtol: float = 1e-4,
    seed: int = 0,
    scan: str = "decomposed",
) -> ExportReport:
    """Export a registry model and (by default) verify the artifact before it appears under its name.

    ``scan`` picks how selective scans (A2Mamba) are written: ``"decomposed"`` standard ops or
    ``"custom"`` one ``edgevit.SelectiveScan`` node each (see ``edgevit.exporters.onnx_scan``).
    A failed verification raises :class:`VerificationError` and leaves no file at ``output``.
    """
    if to not in FORMATS:
        raise EdgevitError(f"unknown export format {to!r}; choose one of {', '.join(FORMATS)}")
    name = resolve_name(name)
    card = get_model_card(name)
    size = parse_input_size(input_size, card)
    if batch < 1:
        raise EdgevitError(f"--batch must be at least 1, got {batch}")
    model = build_model(name, weights, features_only, seed)
    meta = ArtifactMetadata(
        model=name, input_size=size, mean=card.mean, std=card.std, batch=None if dynamic_batch else batch,
        output_names=tuple(model.output_names), features_only=features_only,
        weights=str(Path(weights).resolve()) if weights else f"random(seed={seed})", seed=seed,
        edgevit_version=__version__, extra={"scan": scan},
    )
    stem = artifact_stem(name, size, meta.batch, features_only) + ("" if scan == "decomposed" else f"-scan{scan}")
    path = Path(output) if output else Path("artifacts") / f"{stem}.onnx"
    t0 = time.perf_counter()
    from .exporters.onnx import DEFAULT_OPSET, OnnxExportOptions, export_onnx

    options = OnnxExportOptions(size, batch, dynamic_batch, opset or DEFAULT_OPSET, simplify, scan=scan)
    parity = None
    with atomic_output(path) as tmp:
        export_onnx(model, tmp, options, meta)
        if verify:
            parity = verify_runner(runtimes.load(model, input_size=size), runtimes.load(tmp, "onnxruntime"),
                                   DEFAULT_VERIFY_BATCH if dynamic_batch else batch, size, seed=seed,
                                   atol=atol, rtol=rtol)
            if not parity.passed:
                raise VerificationError(f"{name} ONNX output differs from PyTorch beyond rtol={rtol:g} atol={atol:g} "
                                        f"({parity.summary()}); nothing was written to {path}")
    return ExportReport(path, meta, time.perf_counter() - t0, path.stat().st_size, parity)


def verify(
    name: str | None,
    artifact: str | Path,
    *,
    backend: str | None = None,
    weights: str | None = None,
    batch: int | None = None,
    seed: int = 0,
    atol: float = 0.0,
    rtol: float = 1e-4,
    threads: int | None = None,
) -> ParityReport:
    """Compare an artifact with the PyTorch model described by its metadata (or by ``name``)."""
    path = Path(artifact)
    if not path.exists():
        raise ArtifactError(f"artifact {str(path)!r} does not exist; export one with `edgevit export`")
    runner = runtimes.load(path, backend, threads=threads)
    meta = runner.metadata
    if name is None and meta is None:
        raise ArtifactError(f"{str(path)!r} carries no edgevit metadata; name the model: edgevit verify MODEL {path}")
    model_name = resolve_name(name) if name else meta.model  # type: ignore[union-attr]
    if meta is not None and meta.model != model_name:
        raise ArtifactError(f"{str(path)!r} was exported from {meta.model}, not {model_name}")
    card = get_model_card(model_name)
    size = meta.input_size if meta else card.input_size
    features_only = meta.features_only if meta else False
    if weights is None and meta is not None and not meta.weights.startswith("random("):
        weights = meta.weights
        if not Path(weights).exists():
            raise ArtifactError(f"{str(path)!r} was exported with weights {weights!r}, which no longer exist; "
                                "pass --weights")
    seed_used = meta.seed if meta else seed
    reference = runtimes.load(build_model(model_name, weights, features_only, seed_used), threads=threads)
    static_batch = meta.batch if meta else None
    if batch is not None and static_batch is not None and batch != static_batch:
        raise InputShapeError(f"{str(path)!r} has a fixed batch of {static_batch}; drop --batch or pass {static_batch}")
    n = batch or static_batch or DEFAULT_VERIFY_BATCH
    return verify_runner(reference, runner, n, size, seed=seed, atol=atol, rtol=rtol)


def cache_dir() -> Path:
    """Where benchmark artifacts are kept between runs (``EDGEVIT_CACHE`` overrides)."""
    import os

    return Path(os.environ.get("EDGEVIT_CACHE", Path.home() / ".cache" / "edgevit"))


def cached_onnx(name: str, input_size: tuple[int, int], batch: int) -> Path:
    """A verified ONNX artifact for (model, size, batch), exported once and reused while the edgevit version
    and the request match its metadata."""
    from .exporters.onnx import read_metadata

    name = resolve_name(name)
    path = cache_dir() / f"{artifact_stem(name, input_size, batch, False)}.onnx"
    if path.exists():
        meta = read_metadata(path)
        if (meta is not None and meta.edgevit_version == __version__ and meta.model == name
                and tuple(meta.input_size) == tuple(input_size) and meta.batch == batch):
            return path
    return export(name, "onnx", path, input_size=input_size, batch=batch).path
