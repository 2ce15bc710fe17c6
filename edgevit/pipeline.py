"""High-level operations shared by the CLI and the Python API: export -> verify, and artifact caching.

This is the one place that ties models, exporters and runtimes together, so the lower layers keep a
one-way dependency (model -> exporter -> artifact -> runtime -> verify/bench).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any
from pathlib import Path

from torch import nn

from . import __version__, runtimes
from .artifact import ArtifactMetadata, atomic_output, atomic_output_dir
from .errors import ArtifactError, EdgevitError, InputShapeError, VerificationError
from .models import create_model, get_model_card, resolve_name
from .models.registry import ModelCard
from .quantization.accuracy import EVAL_COUNT, AgreementReport, measure_agreement
from .verify import ParityReport, verify_runner

FORMATS = ("onnx", "openvino", "tensorrt")
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
    agreement: AgreementReport | None = None  # int8 artifacts: verified by agreement with fp32, not by rtol


def build_model(name: str, weights: str | None = None, features_only: bool = False, seed: int = 0,
                options: dict[str, Any] | None = None) -> nn.Module:
    """``options`` are the family's constructor overrides (e.g. MAT ``sampler="manual"``); an option the
    family does not take is a user error, not a TypeError."""
    try:
        return create_model(name, weights=weights, features_only=features_only, seed=seed, **(options or {}))
    except TypeError as exc:
        if options and "unexpected keyword argument" in str(exc):
            raise EdgevitError(f"{name} does not take model option(s) {', '.join(options)}: {exc}") from exc
        raise


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
    precision: str | None = None,
    embed_preprocess: bool = False,
    calib_images: str | Path | None = None,
    opt_batch: int | None = None,
    max_batch: int | None = None,
    workspace_gb: float = 4.0,
    model_options: dict[str, Any] | None = None,
    eval_images: int = EVAL_COUNT,
) -> ExportReport:
    """Export a registry model and (by default) verify the artifact before it appears under its name.

    ``scan`` picks how selective scans (A2Mamba) are written: ``"decomposed"`` standard ops or
    ``"custom"`` one ``edgevit.SelectiveScan`` node each (see ``edgevit.exporters.onnx_scan``).
    ``precision``, ``embed_preprocess`` and ``calib_images`` are OpenVINO's (see :func:`export_openvino`);
    ``precision``, ``batch`` (the minimum), ``opt_batch``, ``max_batch`` and ``workspace_gb`` TensorRT's.
    ``model_options`` are constructor overrides, recorded in the artifact so ``verify`` rebuilds the same model.
    A failed verification raises :class:`VerificationError` and leaves no file at ``output``.
    """
    if to not in FORMATS:
        raise EdgevitError(f"unknown export format {to!r}; choose one of {', '.join(FORMATS)}")
    if to == "openvino":
        return export_openvino(name, output, input_size=input_size, batch=batch, dynamic_batch=dynamic_batch,
                               opset=opset, simplify=simplify, weights=weights, features_only=features_only,
                               verify=verify, atol=atol, rtol=rtol, seed=seed, scan=scan,
                               precision=precision or "fp32", embed_preprocess=embed_preprocess,
                               calib_images=calib_images, model_options=model_options, eval_images=eval_images)
    if to == "tensorrt":
        if embed_preprocess or calib_images is not None:
            raise EdgevitError("--embed-preprocess and --calib-images apply to --to openvino only")
        return export_tensorrt(name, output, input_size=input_size, precision=precision or "fp16", min_batch=batch,
                               opt_batch=opt_batch, max_batch=max_batch, workspace_gb=workspace_gb,
                               weights=weights, features_only=features_only, scan=scan, verify=verify, rtol=rtol,
                               seed=seed, model_options=model_options)
    if precision is not None or embed_preprocess or calib_images is not None:
        raise EdgevitError("--precision, --embed-preprocess and --calib-images apply to --to openvino/tensorrt; "
                           "an ONNX export is always fp32")
    name = resolve_name(name)
    card = get_model_card(name)
    size = parse_input_size(input_size, card)
    if batch < 1:
        raise EdgevitError(f"--batch must be at least 1, got {batch}")
    model = build_model(name, weights, features_only, seed, model_options)
    meta = ArtifactMetadata(
        model=name, input_size=size, mean=card.mean, std=card.std, batch=None if dynamic_batch else batch,
        output_names=tuple(model.output_names), features_only=features_only,
        weights=str(Path(weights).resolve()) if weights else f"random(seed={seed})", seed=seed,
        edgevit_version=__version__,
        extra={"scan": scan, **({"model_options": json.dumps(model_options)} if model_options else {})},
    )
    path = Path(output) if output else Path("artifacts") / f"{default_stem(meta)}.onnx"
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


# Parity bounds of OpenVINO IRs, always run in f32 for verification: fp32 IRs match like ONNX Runtime;
# fp16 IRs store weights with a 10-bit mantissa (decompressed to f32 at load). int8 IRs are not held to an
# elementwise bound: they are verified by top-1 agreement with the fp32 model on the fixed evaluation set
# (edgevit.quantization.accuracy; README, INT8).
OPENVINO_RTOL = {"fp32": 1e-4, "fp16": 1e-2}


def refuse_int8_features(features_only: bool) -> None:
    """INT8 is verified by classification agreement, which feature maps do not have: refused up front."""
    if features_only:
        raise EdgevitError("int8 artifacts are verified by classification agreement; export the classifier "
                           "(drop --features-only) or use fp32/fp16 for feature maps")


def check_int8_agreement(reference: runtimes.Runner, candidate: runtimes.Runner, meta: ArtifactMetadata,
                         what: str, count: int = EVAL_COUNT) -> AgreementReport:
    """Agreement of an int8 artifact with its fp32 model on the evaluation set; raises
    :class:`VerificationError` below the threshold. ``what`` names the artifact in the error."""
    refuse_int8_features(meta.features_only)
    report = measure_agreement(reference, candidate, meta.input_size, meta.mean, meta.std, count=count)
    if not report.passed:
        raise VerificationError(f"{meta.model} {what} disagrees with fp32 PyTorch: {report.summary()}")
    return report


def export_openvino(
    name: str,
    output: str | Path | None = None,
    *,
    input_size: int | str | tuple[int, int] | None = None,
    batch: int = 1,
    dynamic_batch: bool = False,
    precision: str = "fp32",
    embed_preprocess: bool = False,
    calib_images: str | Path | None = None,
    opset: int | None = None,
    simplify: bool = True,
    weights: str | None = None,
    features_only: bool = False,
    scan: str = "decomposed",
    verify: bool = True,
    atol: float = 0.0,
    rtol: float = 1e-4,
    seed: int = 0,
    model_options: dict[str, Any] | None = None,
    eval_images: int = EVAL_COUNT,
) -> ExportReport:
    """Verified ONNX -> OpenVINO IR folder (``model.xml``/``.bin``/``manifest.json``) -> parity in OpenVINO f32.

    ``precision`` fp32 | fp16 (weights stored fp16) | int8 (NNCF, calibrated on ``calib_images`` or a
    synthetic set); ``embed_preprocess`` makes the IR take uint8 NHWC RGB. fp16 is checked against at least
    its bound in :data:`OPENVINO_RTOL`, int8 by top-1 agreement on ``eval_images`` evaluation images
    (:func:`check_int8_agreement`). The folder appears under its name only once verified.
    """
    import dataclasses
    import tempfile

    from .exporters import openvino as ovx

    options = ovx.OpenVinoExportOptions(precision, embed_preprocess, Path(calib_images) if calib_images else None)
    options.check()
    if precision == "int8":
        refuse_int8_features(features_only)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgevit-openvino-") as tmpdir:
        onnx_report = export(name, "onnx", Path(tmpdir) / "model.onnx", input_size=input_size, batch=batch,
                             dynamic_batch=dynamic_batch, opset=opset, simplify=simplify, weights=weights,
                             features_only=features_only, verify=verify, atol=atol,
                             rtol=rtol if precision == "fp32" else OPENVINO_RTOL["fp32"], seed=seed, scan=scan,
                             model_options=model_options)
        model = ovx.read_onnx(onnx_report.path)
    meta = onnx_report.metadata
    notes: dict[str, object] = {}
    if precision == "int8":
        from .models.int8_rules import keep_float_rules

        samples, notes["calibration"] = ovx.calibration_set(meta, options)
        model, notes["kept_in_float"] = ovx.quantize_int8(model, samples,
                                                          keep_float_rules(get_model_card(meta.model).family))
    if embed_preprocess:
        model = ovx.embed_preprocessing(model, meta.mean, meta.std)
    meta = dataclasses.replace(meta, extra={
        **meta.extra, "format": "openvino", "precision": precision,
        "preprocess": ovx.PREPROCESS_U8 if embed_preprocess else "none",
        **({"calibration": str(notes["calibration"])} if "calibration" in notes else {})})
    path = Path(output) if output else Path("artifacts") / ovx.ir_dir_name(default_stem(meta), options)
    if path.suffix.lower() == ".xml":
        raise EdgevitError(f"an OpenVINO IR is a folder (model.xml, model.bin, manifest.json); pass a folder "
                           f"as --output, e.g. {path.with_suffix('')}")
    parity = agreement = None
    with atomic_output_dir(path) as tmp:
        ovx.save_ir(model, tmp, meta, precision)
        if verify and precision == "int8":
            reference = runtimes.load(build_model(meta.model, weights, features_only, seed, model_options),
                                      input_size=meta.input_size)
            candidate = runtimes.load(tmp, "openvino", precision="f32")
            agreement = check_int8_agreement(reference, candidate, meta,
                                             f"OpenVINO int8 IR (nothing was written to {path})", eval_images)
            notes["agreement"] = agreement.to_dict()
        elif verify:
            bound = rtol if precision == "fp32" else max(rtol, OPENVINO_RTOL[precision])
            size = meta.input_size
            reference = runtimes.load(build_model(meta.model, weights, features_only, seed, model_options),
                                      input_size=size)
            parity = verify_runner(reference, runtimes.load(tmp, "openvino", precision="f32"),
                                   DEFAULT_VERIFY_BATCH if dynamic_batch else batch, size, seed=seed,
                                   atol=atol, rtol=bound)
            if not parity.passed:
                raise VerificationError(f"{meta.model} OpenVINO {precision} IR differs from PyTorch beyond "
                                        f"rtol={bound:g} atol={atol:g} ({parity.summary()}); nothing was written "
                                        f"to {path}")
            notes["parity"] = {"runtime": parity.candidate, "rtol": bound, "max_rel": parity.worst_rel,
                               "top1_agreement": parity.top1_agreement, "batch": parity.batch,
                               "inputs": "seeded (uint8 synthetic images)" if embed_preprocess
                               else "seeded standard-normal"}
        ovx.write_manifest(tmp, meta, model, notes)
    size_bytes = sum(f.stat().st_size for f in path.iterdir())
    return ExportReport(path, meta, time.perf_counter() - t0, size_bytes, parity, agreement)


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
    eval_images: int = EVAL_COUNT,
) -> ParityReport | AgreementReport:
    """Compare an artifact with the PyTorch model described by its metadata (or by ``name``): elementwise
    parity, or for an int8 artifact agreement with fp32 on ``eval_images`` evaluation images."""
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
    options = json.loads(meta.extra["model_options"]) if meta and "model_options" in meta.extra else None
    reference = runtimes.load(build_model(model_name, weights, features_only, seed_used, options), threads=threads)
    if meta is not None and meta.extra.get("precision") == "int8":
        refuse_int8_features(meta.features_only)
        return measure_agreement(reference, runner, size, meta.mean, meta.std, count=eval_images)
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


# Parity bound for TensorRT engines: fp32 engines (TF32 off) match like ONNX Runtime; fp16 engines keep
# normalisation/softmax/scan in fp32 but round activations to a 10-bit mantissa, so 1e-2 of the output range.
TENSORRT_RTOL = {"fp32": 1e-4, "fp16": 1e-2}


def export_tensorrt(
    name: str,
    output: str | Path | None = None,
    *,
    input_size: int | str | tuple[int, int] | None = None,
    precision: str = "fp16",
    min_batch: int = 1,
    opt_batch: int | None = None,
    max_batch: int | None = None,
    workspace_gb: float = 4.0,
    weights: str | None = None,
    features_only: bool = False,
    scan: str = "decomposed",
    verify: bool = True,
    rtol: float = 1e-4,
    seed: int = 0,
    model_options: dict[str, Any] | None = None,
) -> ExportReport:
    """Verified ONNX -> operator-support check -> TensorRT engine (+ manifest) -> parity vs PyTorch.

    UNVERIFIED on the machines edgevit is developed on (no GPU); see README.
    """
    import tempfile

    import onnx

    from .exporters.tensorrt import ENGINE_SUFFIX, TensorRTBuildOptions, build_engine, manifest_path
    from .exporters.tensorrt_ops import tensorrt_problems

    name = resolve_name(name)
    card = get_model_card(name)
    size = parse_input_size(input_size, card)
    max_batch = max_batch or opt_batch or min_batch
    options = TensorRTBuildOptions(precision, min_batch, opt_batch or max_batch, max_batch, workspace_gb,
                                   cache_dir() / "tensorrt-timing.cache")
    batch = None if options.dynamic_batch else min_batch
    stem = artifact_stem(name, size, batch, features_only) + f"-{precision}"
    path = Path(output) if output else Path("artifacts") / f"{stem}{ENGINE_SUFFIX}"
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmpdir:
        onnx_report = export(name, "onnx", Path(tmpdir) / "model.onnx", input_size=size, batch=min_batch,
                             dynamic_batch=options.dynamic_batch, weights=weights, features_only=features_only,
                             scan=scan, seed=seed, model_options=model_options)
        problems = tensorrt_problems(onnx.load(str(onnx_report.path), load_external_data=False))
        if problems:
            raise EdgevitError(f"{name} ONNX graph is not TensorRT-compatible: {'; '.join(problems[:5])}")
        parity = None
        with atomic_output(path) as tmp:
            build_engine(onnx_report.path, tmp, options, onnx_report.metadata)
            tmp_manifest = manifest_path(tmp)
            try:
                if verify:
                    bound = max(rtol, TENSORRT_RTOL[precision])
                    reference = runtimes.load(build_model(name, weights, features_only, seed, model_options),
                                              input_size=size)
                    parity = verify_runner(reference, runtimes.load(tmp, "tensorrt"), options.opt_batch, size,
                                           seed=seed, rtol=bound)
                    if not parity.passed:
                        raise VerificationError(f"{name} TensorRT {precision} engine differs from PyTorch beyond "
                                                f"rtol={bound:g} ({parity.summary()}); nothing was written")
                tmp_manifest.replace(manifest_path(path))
            finally:
                tmp_manifest.unlink(missing_ok=True)
    return ExportReport(path, onnx_report.metadata, time.perf_counter() - t0, path.stat().st_size, parity)


def cached_artifact(name: str, fmt: str, input_size: tuple[int, int], batch: int,
                    precision: str | None = None) -> Path:
    """Benchmark artifacts other than ONNX (TensorRT engines, OpenVINO IRs), built once per (model, size,
    batch, precision)."""
    if fmt == "onnx":
        return cached_onnx(name, input_size, batch)
    if fmt == "tensorrt":
        from .exporters.tensorrt import ENGINE_SUFFIX, EngineManifest, manifest_path

        prec = precision or "fp16"
        path = cache_dir() / f"{artifact_stem(resolve_name(name), input_size, batch, False)}-{prec}{ENGINE_SUFFIX}"
        if path.exists() and manifest_path(path).exists():
            meta = ArtifactMetadata.from_props(EngineManifest.read(manifest_path(path)).metadata)
            if meta is not None and meta.edgevit_version == __version__:
                return path
        return export_tensorrt(name, path, input_size=input_size, precision=prec, min_batch=batch).path
    if fmt == "openvino":  # an IR folder per IR precision (fp32/fp16/int8); the runtime precision is separate
        import json

        from .exporters.openvino import MANIFEST_FILE, OpenVinoExportOptions, ir_dir_name

        prec = precision or "fp32"
        stem = artifact_stem(resolve_name(name), input_size, batch, False)
        path = cache_dir() / ir_dir_name(stem, OpenVinoExportOptions(prec))
        if (path / MANIFEST_FILE).exists():
            meta = ArtifactMetadata.from_props(json.loads((path / MANIFEST_FILE).read_text()).get("metadata", {}))
            if meta is not None and meta.edgevit_version == __version__:
                return path
        return export_openvino(name, path, input_size=input_size, batch=batch, precision=prec).path
    raise EdgevitError(f"no cached artifact format {fmt!r}")
