"""High-level operations shared by the CLI and the Python API: export -> verify, and artifact caching.

This is the one place that ties models, exporters and runtimes together, so the lower layers keep a
one-way dependency (model -> exporter -> artifact -> runtime -> verify/bench).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from . import __version__, runtimes
from .artifact import (
    ArtifactMetadata,
    OutputKind,
    atomic_output,
    atomic_output_dir,
    claim_output,
    output_kind,
    scratch_dir,
)
from .cache import cache_dir, source_digest
from .errors import ArtifactError, EdgevitError, InputShapeError, VerificationError
from .formats import FOLDER, FORMATS, FP32_RTOL, Format, check_precision, format_options, get_format
from .models import create_model, get_model_card, is_generated_weights, resolve_name, weights_label
from .models.registry import ModelCard
from .resources import check_forward_fits
from .runtimes import Runner
from .quantization.accuracy import EVAL_COUNT, AgreementReport, measure_agreement
from .verify import ParityReport, verify_runner

DEFAULT_VERIFY_BATCH = 2
__all__ = ["ExportOptions", "ExportReport", "cache_dir", "cached_artifact", "export", "format_options", "verify"]


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
        rule = f"a multiple of {mult} and at least {lo}" if mult > 1 else f"at least {lo}"
        raise InputShapeError(f"{card.name} needs an input size that is {rule}, got {h}x{w}; "
                              f"try --input-size {up(h)}x{up(w)}")
    return h, w


def artifact_stem(name: str, input_size: tuple[int, int], batch: int | None, features_only: bool) -> str:
    b = "bdyn" if batch is None else f"b{batch}"
    return f"{name}-{input_size[0]}x{input_size[1]}-{b}" + ("-features" if features_only else "")


def default_stem(meta: ArtifactMetadata) -> str:
    """The artifact name (without suffix) for what ``meta`` describes; a non-default scan mode is named."""
    scan = meta.extra.get("scan", "decomposed")
    return artifact_stem(meta.model, meta.input_size, meta.batch, meta.features_only) + (
        "" if scan == "decomposed" else f"-scan{scan}")


@dataclass(frozen=True)
class ExportReport:
    path: Path
    metadata: ArtifactMetadata
    seconds: float
    size_bytes: int
    parity: ParityReport | None
    agreement: AgreementReport | None = None  # int8: verified by agreement with fp32 (parity is None)


def build_model(name: str, weights: str | None = None, features_only: bool = False, seed: int = 0,
                options: dict[str, Any] | None = None) -> nn.Module:
    """``options`` are the family's constructor overrides (e.g. MAT ``sampler="manual"``), checked against
    the options its card declares before anything is built (:meth:`ModelCard.check_options`)."""
    own_flags = sorted(set(options or {}) & {"weights", "features_only", "seed"})
    if own_flags:
        raise EdgevitError(f"--option cannot set {', '.join(own_flags)}: use "
                           f"{', '.join('--' + k.replace('_', '-') for k in own_flags)} instead")
    return create_model(name, weights=weights, features_only=features_only, seed=seed, **(options or {}))


def parse_model_options(pairs: list[str] | None) -> dict[str, Any]:
    """``["sampler=manual", "ffn_ratios=(8,8,4,4)"]`` -> dict; values are Python literals or plain strings."""
    import ast

    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise EdgevitError(f"model option {pair!r} is not KEY=VALUE (e.g. --option sampler=manual)")
        try:
            out[key.strip()] = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            out[key.strip()] = raw.strip()
    return out


@dataclass(frozen=True)
class ExportOptions:
    """What every format shares: which model to build, at which shape, and how to verify it.

    ``rtol``/``atol`` bound the verification (``max_abs <= atol + rtol * max|reference|`` per output);
    ``rtol=None`` takes the format's default for its precision (:attr:`Format.tolerance`). A format built
    from an intermediate (OpenVINO, TensorRT from ONNX) verifies the intermediate with the same
    ``verify``/``rtol``/``atol`` (``None``: the intermediate's own default).
    """

    input_size: int | str | tuple[int, int] | None = None
    batch: int = 1
    dynamic_batch: bool = False  # overrides ``batch``
    weights: str | None = None
    features_only: bool = False
    seed: int = 0
    model_options: dict[str, Any] | None = None  # family constructor overrides, recorded in the artifact
    verify: bool = True
    rtol: float | None = None
    atol: float = 0.0
    force: bool = False  # replace a previous edgevit artifact at the output (never anything else)
    eval_images: int = EVAL_COUNT  # int8: size of the evaluation set that top-1 agreement is measured on


def export(model: str, to: str = "onnx", output: str | Path | None = None, options: ExportOptions | None = None,
           format_options: Any = None, **common: Any) -> ExportReport:
    """Export a registry model to format ``to`` and (by default) verify it before it appears at ``output``.

    ``options`` are the :class:`ExportOptions` every format takes (``**common`` overrides their fields, e.g.
    ``input_size=64, verify=False``); ``format_options`` is the format's own options object
    (``formats.format_options("openvino", precision="fp16")``; default: the format's defaults). A failed
    verification raises :class:`VerificationError` and leaves nothing at ``output``. ``output`` follows
    :func:`edgevit.artifact.claim_output` (checked before any work): an existing path is replaced only when
    it is a previous edgevit artifact of this format and ``force`` is set; an existing folder given for a
    single-file format receives the default file name inside it.
    """
    fmt = get_format(to)
    opts = _export_options(options, common, fmt)
    fopts = fmt.options_type() if format_options is None else format_options
    if not isinstance(fopts, fmt.options_type):
        raise EdgevitError(f"--to {to} takes {fmt.options_type.__name__} options, got {type(fopts).__name__}; "
                           f"build them with edgevit.formats.format_options({to!r}, ...)")
    check_precision(fmt, fopts)
    _check_verification_options(fmt, fopts, opts)
    name = resolve_name(model)
    card = get_model_card(name)
    size = parse_input_size(opts.input_size, card)
    if opts.batch < 1:
        raise EdgevitError(f"--batch must be at least 1, got {opts.batch}")
    batch = None if opts.dynamic_batch else opts.batch
    fopts.check(batch)
    out = Path(output) if output is not None else None
    if out is not None and fmt.artifact == FOLDER and out.suffix.lower() in _file_suffixes() and not out.exists():
        raise EdgevitError(f"an {fmt.title} is a folder, not a {out.suffix} file; pass a folder as --output, "
                           f"e.g. {out.with_suffix('')}")
    default = fmt.default_name(default_stem(ArtifactMetadata(name, size, card.mean, card.std, batch,
                                                             features_only=opts.features_only,
                                                             extra=_naming_extra(fopts))), fopts)
    out = claim_output(out or Path("artifacts") / default, artifact_kind(fmt), force=opts.force,
                       default_name=default)
    if fmt.check_available is not None:
        fmt.check_available()
    net = build_model(name, opts.weights, opts.features_only, opts.seed, opts.model_options)
    check_forward_fits(net, name, size, batch or DEFAULT_VERIFY_BATCH, probe=probe_size(card))
    meta = ArtifactMetadata(
        model=name, input_size=size, mean=card.mean, std=card.std, batch=batch,
        output_names=tuple(net.output_names), features_only=opts.features_only,
        weights=weights_label(opts.weights, opts.seed), seed=opts.seed,
        edgevit_version=__version__, source_digest=source_digest(),
        extra={"model_options": json.dumps(opts.model_options)} if opts.model_options else {},
    )
    reference = runtimes.load(net, input_size=size) if opts.verify else None
    t0 = time.perf_counter()
    path, meta, result = _export_and_verify(fmt, fopts, net, meta, opts, out, reference)
    size_bytes = sum(f.stat().st_size for f in path.iterdir()) if path.is_dir() else path.stat().st_size
    parity = result if isinstance(result, ParityReport) else None
    agreement = result if isinstance(result, AgreementReport) else None
    return ExportReport(path, meta, time.perf_counter() - t0, size_bytes, parity, agreement)


def _check_verification_options(fmt: Format, fopts: Any, opts: ExportOptions) -> None:
    """int8 is verified by agreement, other precisions by rtol/atol: the other kind's option is refused."""
    by_agreement = fmt.default_rtol(fopts) is None
    if by_agreement and (opts.rtol is not None or opts.atol):
        raise EdgevitError(f"{fmt.title} {fmt.precision(fopts)} is verified by top-1 agreement with fp32, not by "
                           "--rtol/--atol; drop them (--eval-images sets the evaluation set size)")
    if not by_agreement and opts.eval_images != EVAL_COUNT:
        raise EdgevitError(f"--eval-images applies to int8 artifacts; {fmt.title} {fmt.precision(fopts)} is "
                           "verified by --rtol/--atol")
    if by_agreement and opts.features_only:
        raise EdgevitError("int8 artifacts are verified by classification agreement; export the classifier "
                           "(drop --features-only) or use fp32/fp16 for feature maps")
    if opts.eval_images < 1:
        raise EdgevitError(f"--eval-images must be at least 1, got {opts.eval_images}")


def artifact_kind(fmt: Format) -> OutputKind:
    """How the output-path policy recognises a previous artifact of ``fmt``: by the row's own metadata reader."""
    return output_kind(fmt.title, fmt.artifact == FOLDER, fmt.read_metadata, fmt.companions)


def _naming_extra(fopts: Any) -> dict[str, str]:
    """The metadata that names an artifact (the scan mode), known from the options before any export."""
    inner = getattr(fopts, "onnx", fopts)
    return inner.metadata() if hasattr(inner, "metadata") else {}


def probe_size(card: ModelCard, target: int = 64) -> tuple[int, int]:
    """The smallest square input near ``target`` the model takes: where a memory estimate is measured."""
    side = max(card.min_input_size, -(-target // card.input_multiple) * card.input_multiple)
    return side, side


def _export_options(options: ExportOptions | None, common: dict[str, Any], fmt: Format) -> ExportOptions:
    known = {f.name for f in dataclasses.fields(ExportOptions)}
    unknown = [k for k in common if k not in known]
    if unknown:
        raise EdgevitError(f"{', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not common export "
                           f"option(s); {fmt.name}'s own options go in format_options="
                           f"edgevit.formats.format_options({fmt.name!r}, ...) (it takes {', '.join(fmt.cli_options)})")
    return dataclasses.replace(options or ExportOptions(), **common)


def _file_suffixes() -> set[str]:
    return {f.artifact for f in FORMATS.values() if f.artifact != FOLDER} | {".xml"}


def _export_and_verify(fmt: Format, fopts: Any, net: nn.Module, meta: ArtifactMetadata, opts: ExportOptions,
                       output: Path | None, reference: Runner | None
                       ) -> tuple[Path, ArtifactMetadata, ParityReport | AgreementReport | None]:
    """The one export path of every format: its intermediate first (exported and verified the same way,
    into a temporary folder), then the artifact, verified in the format's runtime before it is moved
    into place (with its companion files)."""
    with contextlib.ExitStack() as stack:
        source: Any = net
        if fmt.intermediate is not None:
            inter = get_format(fmt.intermediate)
            tmpdir = stack.enter_context(scratch_dir())
            source, meta, _ = _export_and_verify(inter, fopts.onnx, net, meta, opts,
                                                 tmpdir / inter.default_name("model", fopts.onnx), reference)
        meta = dataclasses.replace(meta, extra={**meta.extra, **fopts.metadata(), "format": fmt.name,
                                                "precision": fmt.precision(fopts)})
        path = output or Path("artifacts") / fmt.default_name(default_stem(meta), fopts)
        placement = atomic_output_dir if fmt.artifact == FOLDER else atomic_output
        parity = None
        with placement(path) as tmp:
            try:
                meta = fmt.exporter(source, tmp, fopts, meta)
                if reference is not None:
                    parity = _verify_artifact(fmt, fopts, reference, tmp, meta, opts, path)
                for made, final in zip(fmt.companions(tmp), fmt.companions(path)):
                    os.replace(made, final)
            finally:
                for made in fmt.companions(tmp):
                    made.unlink(missing_ok=True)
    return path, meta, parity


def _verify_artifact(fmt: Format, fopts: Any, reference: Runner, artifact: Path, meta: ArtifactMetadata,
                     opts: ExportOptions, final: Path) -> ParityReport | AgreementReport:
    rtol = opts.rtol if opts.rtol is not None else fmt.default_rtol(fopts)
    candidate = runtimes.load(artifact, fmt.runtime, **fmt.runtime_options)
    if rtol is None:  # int8: top-1 agreement with fp32 on the evaluation set
        agreement = measure_agreement(reference, candidate, meta.input_size, meta.mean, meta.std,
                                      count=opts.eval_images)
        if not agreement.passed:
            raise VerificationError(f"{meta.model} {fmt.title} ({fmt.precision(fopts)}) disagrees with fp32 PyTorch: "
                                    f"{agreement.summary()}; nothing was written to {final}")
        if fmt.record_parity is not None:
            fmt.record_parity(artifact, {"runtime": agreement.candidate, **agreement.to_dict()})
        return agreement
    parity = verify_runner(reference, candidate, meta.batch or DEFAULT_VERIFY_BATCH, meta.input_size,
                           seed=opts.seed, atol=opts.atol, rtol=rtol)
    if not parity.passed:
        raise VerificationError(f"{meta.model} {fmt.title} ({fmt.precision(fopts)}) differs from PyTorch beyond "
                                f"rtol={rtol:g} atol={opts.atol:g} ({parity.summary()}); nothing was written "
                                f"to {final}")
    if fmt.record_parity is not None:
        uint8 = len(candidate.inputs) == 1 and candidate.inputs[0].dtype == "uint8"
        fmt.record_parity(artifact, {"runtime": parity.candidate, "rtol": rtol, "atol": opts.atol,
                                     "max_rel": parity.worst_rel, "top1_agreement": parity.top1_agreement,
                                     "batch": parity.batch,
                                     "inputs": ("seeded uint8 synthetic" if uint8 else "seeded standard-normal")
                                     + (" and uniform images" if "uniform" in parity.inputs else "")})
    return parity


def verify(
    name: str | None,
    artifact: str | Path,
    *,
    backend: str | None = None,
    weights: str | None = None,
    batch: int | None = None,
    seed: int = 0,
    atol: float = 0.0,
    rtol: float | None = None,
    threads: int | None = None,
    eval_images: int = EVAL_COUNT,
) -> ParityReport | AgreementReport:
    """Compare an artifact with the PyTorch model described by its metadata (or by ``name``): elementwise
    parity, or for an int8 artifact top-1 agreement with fp32 on ``eval_images`` evaluation images.

    ``rtol=None`` takes the bound of the artifact's format and precision (as ``export`` does), from its
    metadata; an artifact without them is held to the fp32 bound."""
    path = Path(artifact)
    if not path.exists():
        raise ArtifactError(f"artifact {str(path)!r} does not exist; export one with `edgevit export`")
    runner = runtimes.load(path, backend, threads=threads)
    meta = runner.metadata
    if not name and meta is None:
        raise ArtifactError(f"{str(path)!r} carries no edgevit metadata; name the model: edgevit verify MODEL {path}")
    model_name = resolve_name(name) if name else meta.model  # type: ignore[union-attr]
    if meta is not None and meta.model != model_name:
        raise ArtifactError(f"{str(path)!r} was exported from {meta.model}, not {model_name}")
    card = get_model_card(model_name)
    size = meta.input_size if meta else card.input_size
    features_only = meta.features_only if meta else False
    if weights is None and meta is not None and not is_generated_weights(meta.weights):
        weights = meta.weights
        if not Path(weights).exists():
            raise ArtifactError(f"{str(path)!r} was exported with weights {weights!r}, which no longer exist; "
                                "pass --weights")
    seed_used = meta.seed if meta else seed
    options = json.loads(meta.extra["model_options"]) if meta and "model_options" in meta.extra else None
    reference = runtimes.load(build_model(model_name, weights, features_only, seed_used, options), threads=threads)
    if meta is not None and meta.extra.get("precision") == "int8":
        if features_only:
            raise ArtifactError(f"{str(path)!r} is an int8 feature extractor; int8 is verified by classification "
                                "agreement, which feature maps do not have")
        return measure_agreement(reference, runner, size, meta.mean, meta.std, count=eval_images)
    static_batch = meta.batch if meta else None
    if batch is not None and static_batch is not None and batch != static_batch:
        raise InputShapeError(f"{str(path)!r} has a fixed batch of {static_batch}; drop --batch or pass {static_batch}")
    n = batch or static_batch or DEFAULT_VERIFY_BATCH
    if rtol is None:
        rtol = default_rtol(meta)
    return verify_runner(reference, runner, n, size, seed=seed, atol=atol, rtol=rtol)


def default_rtol(meta: ArtifactMetadata | None) -> float:
    """The export-time bound for an artifact's format and precision (fp32's for a foreign artifact)."""
    extra = meta.extra if meta is not None else {}
    fmt = FORMATS.get(extra.get("format", ""))
    precision = extra.get("precision", "fp32")
    return fmt.tolerance[precision] if fmt is not None and precision in fmt.tolerance else FP32_RTOL


def cached_artifact(name: str, fmt: str, input_size: tuple[int, int], batch: int,
                    precision: str | None = None) -> Path:
    """A benchmark artifact of format ``fmt`` (at ``precision``; default: the format's), exported and
    verified once into :func:`cache_dir`, reused while its metadata matches the request, this version and this
    source (:func:`.cache.source_digest`)."""
    row = get_format(fmt)
    fopts = format_options(fmt, **({"precision": precision} if precision else {}))
    name = resolve_name(name)
    path = cache_dir() / row.default_name(artifact_stem(name, input_size, batch, False), fopts)
    meta = row.read_metadata(path) if path.exists() else None
    if (meta is not None and meta.edgevit_version == __version__ and meta.source_digest == source_digest()
            and meta.model == name
            and tuple(meta.input_size) == tuple(input_size) and meta.batch == batch
            and meta.extra.get("precision", "fp32") == row.precision(fopts)):
        return path
    return export(name, fmt, path, ExportOptions(input_size=input_size, batch=batch, force=True), fopts).path
