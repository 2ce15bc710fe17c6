"""The ``edgevit`` command line: list | info | export | verify | bench | report.

Tables (rich) are for people, ``--json`` is for scripts. A user error prints one line and exits with 2;
a failed verification exits with 1.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import __version__, errors
from .errors import EdgevitError
from .quantization.accuracy import EVAL_COUNT

def _plain_option_types() -> None:
    """Drop typer's ``<bool>``/``<str>`` type tags from ``--help``; keep the informative ones (``<int>``, ``<path>``).

    typer >= 0.2x prints a ``<type>`` tag after every parameter: on a flag (``--json <bool>``) it reads as if
    the flag took a value, and on text options it says nothing the help sentence does not (which names the
    accepted values). One hook on typer's parameter classes covers every command; typer versions without
    the hook print click's plain help and are left alone.
    """
    for name in ("_TyperParameter", "TyperOption", "TyperArgument"):
        cls = getattr(typer.core, name, None)
        original = vars(cls).get("display_type_rich") if cls is not None else None
        if original is None or getattr(original, "_edgevit_plain", False):
            continue

        def display_type_rich(self: Any, ctx: Any, _original: Any = original) -> str | None:
            annotation = getattr(getattr(self, "type_descriptor", None), "annotation", None)
            if annotation in (bool, str) and getattr(self, "metavar", None) is None:
                return None
            return _original(self, ctx)

        display_type_rich._edgevit_plain = True  # type: ignore[attr-defined]
        setattr(cls, "display_type_rich", display_type_rich)


_plain_option_types()
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Export, verify and benchmark efficient vision backbones on every runtime.\n\n"
                       "Exit codes: 0 success, 1 a failed verification or benchmark, 2 a user error (one line "
                       "naming the problem and the fix), 3 a bug in edgevit (--debug shows the traceback), "
                       "130 interrupted.")
# Piped output (logs, CI) gets a wide console so tables are not truncated to rich's 80-column default.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
F = TypeVar("F", bound=Callable[..., Any])

EXIT_USER_ERROR = errors.EXIT_USER_ERROR
EXIT_VERIFY_FAILED = errors.EXIT_CHECK_FAILED
_DEBUG_FLAG = "--debug"


def _debug_from_environment() -> bool:
    return os.environ.get("EDGEVIT_DEBUG", "") not in ("", "0")


# ``debug`` is decided afresh by every invocation (``--debug`` or EDGEVIT_DEBUG), never carried over from an
# earlier one in the same process; ``main_flag`` is a ``--debug`` that :func:`main` took out of the arguments.
_state = {"debug": _debug_from_environment(), "main_flag": False}


def _print_error(message: str) -> None:
    """One red line on stderr (soft-wrapped by the terminal, never by rich)."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
EXIT_BENCH_FAILED = errors.EXIT_CHECK_FAILED  # a benchmark case failed (its row says why)


def user_errors(fn: F) -> F:
    """Turn :class:`EdgevitError` into one red line and its exit code (2, or 1 for a failed check) instead
    of a traceback; with ``--debug`` the error propagates so :func:`main` prints the traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EdgevitError as exc:
            if _state["debug"]:
                raise
            _print_error(str(exc))
            raise typer.Exit(exc.exit_code) from None

    return wrapper  # type: ignore[return-value]


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _print_json(obj: object) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"edgevit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version_callback, is_eager=True,
                                                help="Print the version and exit.")] = False,
          debug: Annotated[bool, typer.Option(_DEBUG_FLAG, help="Show the full traceback of any error (also "
                                                                "EDGEVIT_DEBUG=1); may be given anywhere.")]
          = False) -> None:
    """Exit codes: 0 success, 1 a failed verification or benchmark, 2 a user error (one line naming the
    problem and the fix), 3 a bug in edgevit, 130 interrupted."""
    _state["debug"] = debug or _state["main_flag"] or _debug_from_environment()


@app.command("list")
@user_errors
def list_cmd(
    family: Annotated[str | None, typer.Option(help="Only this family, e.g. S2AFormer.")] = None,
    measure: Annotated[bool, typer.Option(help="Also build each model and count its params/MACs (slower).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Models in the zoo, with the paper's params/GMACs/top-1 (and ours with --measure)."""
    from .models import count_macs, count_params, create_model, get_model_card, list_models

    rows = []
    for name in list_models(family):
        card = get_model_card(name)
        row: dict[str, Any] = {"name": name, "family": card.family, "variant": card.variant,
                               "input_size": list(card.input_size), "architecture": card.architecture,
                               "paper_params_m": card.reported.params_m, "paper_gmacs": card.reported.gmacs,
                               "paper_top1": card.reported.top1}
        if measure:
            model = create_model(name)
            macs = count_macs(model, card.input_size)
            row["params_m"] = round(count_params(model) / 1e6, 3)
            row["gmacs"] = round(macs.for_convention(card.reported.macs_convention) / 1e9, 3)
        rows.append(row)
    if as_json:
        _print_json(rows)
        return
    table = Table(title="edgevit model zoo" + (" (ours measured at the default input size)" if measure else ""))
    table.add_column("model", no_wrap=True)
    table.add_column("input", no_wrap=True)
    for col in ("params M\n(paper)", "GMACs\n(paper)", "top-1\n(paper)"):
        table.add_column(col, justify="right")
    if measure:
        table.add_column("params M\n(ours)", justify="right")
        table.add_column("GMACs\n(ours)", justify="right")
    table.add_column("architecture", no_wrap=True)
    for r in rows:
        cells = [r["name"], "x".join(map(str, r["input_size"])), _as_printed(r["paper_params_m"]),
                 _as_printed(r["paper_gmacs"]), _as_printed(r["paper_top1"])]
        if measure:
            cells += [f"{r['params_m']:.2f}", f"{r['gmacs']:.3f}"]
        table.add_row(*cells, r["architecture"])
    console.print(table)


def _as_printed(value: float | None) -> str:
    """A paper's figure as the paper prints it (15, 5.02, 0.655, 74.0), never re-rounded or zero-padded.

    The model cards hold each figure as the literal the paper printed, so Python's shortest repr gives it
    back; a fixed format such as ``.2f`` would invent digits ("15.00") or drop them ("12.5" for 12.53).
    """
    return "—" if value is None else repr(value)


def _input_rule(card: Any) -> str:
    """The default input size, plus the constraints on other sizes only where there are any."""
    rules = []
    if card.input_multiple > 1:
        rules.append(f"multiple of {card.input_multiple}")
    rules.append(f"at least {card.min_input_size}")
    return f"{card.input_size[0]}x{card.input_size[1]} (other sizes: {', '.join(rules)})"


def _paper_figure_lines(figures: list[Any]) -> str:
    return "\n".join(f"{f.value:g} {f.unit} · {f.runtime} on {f.hardware} ({f.table}, {f.resolution}px, "
                     f"batch {f.batch or 'not stated'})" for f in figures) or "—"


@app.command()
@user_errors
def info(
    model: Annotated[str, typer.Argument(help="Model name, e.g. s2aformer-t.")],
    input_size: Annotated[str | None, typer.Option(help="H or HxW for the MAC count.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Model card, measured params and MACs (by kind of op) and the paper's figures."""
    from .models import count_macs, count_params, create_model, get_model_card
    from .models.int8_rules import keep_float_rules
    from .models.paper import figures_for
    from .pipeline import probe_size, parse_input_size
    from .resources import check_forward_fits

    card = get_model_card(model)
    size = parse_input_size(input_size, card)
    net = create_model(card.name)
    check_forward_fits(net, card.name, size, 1, probe_size(card))  # counting MACs runs one forward pass
    macs = count_macs(net, size)
    data = card.to_dict()
    data["paper_figures"] = [asdict(f) for f in figures_for(card.name)]
    data["int8_keep_float"] = [asdict(rule) for rule in keep_float_rules(card.family)]
    data["measured"] = {"input_size": list(size), "params": count_params(net), "macs_total": macs.total,
                        "macs_by_kind": macs.by_kind,
                        "macs_paper_convention": macs.for_convention(card.reported.macs_convention)}
    if as_json:
        _print_json(data)
        return
    rep = card.reported
    table = Table(title=f"{card.name} ({card.family} {card.variant})", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    ours_macs = data["measured"]["macs_paper_convention"] / 1e9
    for key, value in [
        ("paper", f"{card.paper}\n{card.paper_url}"),
        ("architecture", card.architecture),
        ("input", _input_rule(card)),
        ("mean / std", f"{card.mean} / {card.std}"),
        ("params", f"{count_params(net) / 1e6:.3f} M (paper {rep.params_m} M)"),
        (f"GMACs @{size[0]}x{size[1]}", f"{ours_macs:.3f} counted as {rep.macs_convention} (paper {rep.gmacs} @"
                                        f"{rep.input_size}); all ops {macs.total / 1e9:.3f}"),
        ("MACs by kind", ", ".join(f"{k} {v / 1e9:.3f} G" for k, v in sorted(macs.by_kind.items()))),
        ("top-1 (paper)", f"{rep.top1}"),
        # speed (throughput, latency) and memory are different questions: the paper tables mix them
        ("speed (paper)", _paper_figure_lines([f for f in figures_for(card.name) if f.metric != "memory"])),
        ("memory (paper)", _paper_figure_lines(figures_for(card.name, "memory"))),
        ("source", rep.source),
        ("notes", card.notes),
        ("int8: kept in float", "\n".join(rule.describe() for rule in keep_float_rules(card.family))),
    ]:
        table.add_row(key, value)
    console.print(table)


def _progress() -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                    console=err_console, transient=True)


@app.command()
@user_errors
def export(
    model: Annotated[str, typer.Argument(help="Model name, e.g. s2aformer-t.")],
    to: Annotated[str, typer.Option("--to", help="Artifact format: onnx, openvino (an IR folder), tensorrt "
                                                 "(an engine; needs an NVIDIA GPU and edgevit\\[tensorrt]), "
                                                 "executorch (a .pte; edgevit\\[executorch]) or ort (an .ort "
                                                 "folder for ONNX Runtime Mobile).")] = "onnx",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Artifact path (default artifacts/...); an "
                                                "existing folder receives an .onnx/.engine file inside it.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace a previous edgevit artifact at --output (never "
                                                        "anything edgevit did not write).")] = False,
    input_size: Annotated[str | None, typer.Option(help="H or HxW (default: the model's).")] = None,
    batch: Annotated[int, typer.Option(help="Static batch size.")] = 1,
    dynamic_batch: Annotated[bool, typer.Option(help="Make the batch axis dynamic (overrides --batch).")] = False,
    weights: Annotated[str | None, typer.Option(help="Local checkpoint (.pth/.pt/.safetensors).")] = None,
    features_only: Annotated[bool, typer.Option(help="Export the four stage feature maps, no classifier.")] = False,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Check parity with PyTorch in the format's "
                                                                       "runtime (and the intermediate ONNX's).")] = True,
    rtol: Annotated[float | None, typer.Option(help="Max abs error / max |reference| allowed (default: the "
                                                    "format's for its precision: 1e-4 fp32, 1e-2 fp16; int8 is "
                                                    "verified by top-1 agreement instead).")
                    ] = None,
    atol: Annotated[float, typer.Option(help="Absolute slack added to rtol * max |reference|.")] = 0.0,
    eval_images: Annotated[int, typer.Option(help="int8: images of the fixed evaluation set on which top-1 "
                                                  "agreement with fp32 is verified.")] = EVAL_COUNT,
    option: Annotated[list[str] | None, typer.Option("--option", help="Model constructor option KEY=VALUE, "
                                                     "repeatable (e.g. sampler=manual for MAT).")] = None,
    # Format options: None means "not given", so a flag the format does not take is refused, never ignored.
    opset: Annotated[int | None, typer.Option(help="onnx/openvino/tensorrt: ONNX opset (default 18).")] = None,
    simplify: Annotated[bool | None, typer.Option("--simplify/--no-simplify", help="onnx/openvino/tensorrt: run "
                                                                                   "onnxslim (default on).")] = None,
    scan: Annotated[str | None, typer.Option(help="onnx/openvino/tensorrt, A2Mamba: selective scans as decomposed "
                                                  "standard ops (default) or custom (one edgevit.SelectiveScan node "
                                                  "each, body shipped as an ONNX function).")] = None,
    precision: Annotated[str | None, typer.Option(help="onnx: fp32 (default) or int8 (static QDQ); openvino: fp32 "
                                                       "(default), fp16 or int8 (NNCF); executorch: fp32 (default) "
                                                       "or int8 (PT2E, XNNPACK); tensorrt: fp16 (default) or fp32.")] = None,
    embed_preprocess: Annotated[bool | None, typer.Option("--embed-preprocess", help="openvino: take uint8 NHWC "
                                                          "RGB, normalise inside.")] = None,
    calib_images: Annotated[Path | None, typer.Option(help="onnx/openvino/executorch int8: folder of calibration images "
                                                            "(default: a synthetic set).")] = None,
    calib_count: Annotated[int | None, typer.Option(help="onnx/openvino/executorch int8: calibration images (the "
                                                         "synthetic set's size, or how many of --calib-images are "
                                                         "read, by name; default 256).")] = None,
    opt_batch: Annotated[int | None, typer.Option(help="tensorrt --dynamic-batch: batch the profile is tuned for "
                                                       "(default --max-batch).")] = None,
    max_batch: Annotated[int | None, typer.Option(help="tensorrt --dynamic-batch: largest batch of the profile.")
                         ] = None,
    workspace: Annotated[float | None, typer.Option(help="tensorrt: builder workspace in GB (default 4).")] = None,
    delegate: Annotated[str | None, typer.Option(help="executorch: xnnpack (default) or portable (no delegate, "
                                                      "ExecuTorch's own kernels only).")] = None,
    xnnpack_forms: Annotated[bool | None, typer.Option("--xnnpack-forms/--no-xnnpack-forms", help="executorch: "
                                                       "rewrite LayerNorm/mean/matmul/split into ops XNNPACK "
                                                       "takes (default on).")] = None,
    target_platform: Annotated[str | None, typer.Option(help="ort: optimisations baked in for arm (default, "
                                                             "phones) or amd64.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Export a model; the artifact appears under its name only once it has been verified."""
    from . import pipeline
    from .formats import all_cli_options, format_options

    values = locals()  # every format option of the table is a parameter of this command (tests/test_formats.py)
    given = {k: values[k] for k in all_cli_options() if values[k] is not None}  # only what the user typed
    fopts = format_options(to, **given)
    common = pipeline.ExportOptions(input_size=input_size, batch=batch, dynamic_batch=dynamic_batch, weights=weights,
                                    features_only=features_only, model_options=pipeline.parse_model_options(option),
                                    verify=verify, rtol=rtol, atol=atol, force=force,
                                    eval_images=eval_images)
    with _progress() as progress:
        progress.add_task(f"exporting {model} to {to}" + (" and verifying" if verify else ""), total=None)
        report = pipeline.export(model, to, output, common, fopts)
    result = {"path": str(report.path), "model": report.metadata.model, "input_size": list(report.metadata.input_size),
              "batch": report.metadata.batch, "outputs": list(report.metadata.output_names),
              "size_mb": round(report.size_bytes / 1e6, 2), "seconds": round(report.seconds, 1),
              "verified": report.parity is not None or report.agreement is not None}
    result.update({k: report.metadata.extra[k] for k in ("format", "precision", "preprocess", "calibration", "scan")
                   if k in report.metadata.extra})
    if report.parity is not None:
        result.update(_parity_dict(report.parity))
    if report.agreement is not None:
        result.update(agreement=report.agreement.to_dict(), passed=report.agreement.passed,
                      runtime=report.agreement.candidate)
    if as_json:
        _print_json(result)
        return
    console.print(f"[green]✓[/] wrote {report.path} ({result['size_mb']} MB, {result['seconds']} s)")
    if "calibration" in result:
        console.print(f"  int8 calibration: {result['calibration']}", highlight=False)
    if report.parity is not None:
        console.print(f"  verified in {report.parity.candidate}: {report.parity.summary()}")
    if report.agreement is not None:
        console.print(f"  verified in {report.agreement.candidate} against fp32 PyTorch: "
                      f"{report.agreement.summary()}", highlight=False)


def _parity_dict(parity: Any) -> dict[str, Any]:
    return {"passed": parity.passed, "max_rel": parity.worst_rel, "top1_agreement": parity.top1_agreement,
            "outputs": [{"name": o.name, "max_abs": o.max_abs, "max_ref": o.max_ref, "rel": o.rel,
                         "mean_abs": o.mean_abs} for o in parity.outputs],
            "rtol": parity.rtol, "atol": parity.atol, "batch": parity.batch, "runtime": parity.candidate}


@app.command("verify")
@user_errors
def verify_cmd(
    model: Annotated[str, typer.Argument(help="Model name the artifact was exported from.")],
    artifact: Annotated[Path, typer.Argument(help="Exported artifact (.onnx, OpenVINO IR folder or .xml).")],
    runtime: Annotated[str | None, typer.Option("--runtime", "--runtimes",
                                                help="Runtime to run the artifact with: onnxruntime, openvino, "
                                                     "tensorrt (default: by suffix).")] = None,
    weights: Annotated[str | None, typer.Option(help="Checkpoint the artifact was exported with.")] = None,
    batch: Annotated[int | None, typer.Option(help="Batch size (default: the artifact's, or 2 if dynamic).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random input batch.")] = 0,
    rtol: Annotated[float | None, typer.Option(help="Max abs error / max |reference| allowed (default: the bound "
                                                    "export used for the artifact's format and precision).")] = None,
    atol: Annotated[float, typer.Option(help="Absolute slack added to rtol * max |reference|.")] = 0.0,
    threads: Annotated[int | None, typer.Option(help="Threads for both runtimes.")] = None,
    eval_images: Annotated[int, typer.Option(help="int8 artifacts: images of the fixed evaluation set compared "
                                                  "with fp32 (top-1/top-5 agreement).")] = EVAL_COUNT,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Run the same seeded inputs through PyTorch and the artifact; exit 1 above tolerance (int8 artifacts:
    below the top-1 agreement threshold on the evaluation set)."""
    from . import pipeline
    from .quantization.accuracy import AgreementReport

    with _progress() as progress:
        progress.add_task(f"verifying {artifact}", total=None)
        report = pipeline.verify(model, artifact, backend=runtime, weights=weights, batch=batch, seed=seed,
                                 atol=atol, rtol=rtol, threads=threads, eval_images=eval_images)
    if isinstance(report, AgreementReport):
        if as_json:
            _print_json({**report.to_dict(), "runtime": report.candidate})
        else:
            verdict = "[green]PASS[/]" if report.passed else "[red]FAIL[/]"
            console.print(f"{verdict} {artifact} ({report.candidate}) vs fp32 PyTorch: {report.summary()}",
                          highlight=False)
        if not report.passed:
            raise typer.Exit(EXIT_VERIFY_FAILED)
        return
    if as_json:
        _print_json(_parity_dict(report))
    else:
        table = Table(title=f"{artifact} vs PyTorch ({report.candidate}, batch {report.batch})")
        for col in ("output", "max abs", "max |ref|", "max rel", "mean abs", "ok"):
            table.add_column(col, justify="right")
        for o in report.outputs:
            table.add_row(o.name, f"{o.max_abs:.3e}", f"{o.max_ref:.3e}", f"{o.rel:.3e}", f"{o.mean_abs:.3e}",
                          "[green]✓[/]" if o.passes(report.atol, report.rtol) else "[red]✗[/]")
        console.print(table)
        if report.top1_agreement is not None:
            console.print(f"top-1 agreement: {report.top1_agreement:.1%}")
        verdict = "[green]PASS[/]" if report.passed else "[red]FAIL[/]"
        console.print(f"{verdict} at rtol={report.rtol:g} atol={report.atol:g}")
    if not report.passed:
        raise typer.Exit(EXIT_VERIFY_FAILED)


# Timing protocols: the quick default finishes in well under a minute on 2 cores (the first run adds a cached
# ONNX export); --full is the paper-grade protocol (longer warm-up, more calls, the default batch).
QUICK = {"warmup": 1, "warmup_seconds": 0.3, "iters": 3, "min_seconds": 0.5, "repeats": 3, "batch": 8,
         "roof_seconds": 0.15}
FULL = {"warmup": 3, "warmup_seconds": 1.0, "iters": 20, "min_seconds": 2.0, "repeats": 3, "batch": None,
        "roof_seconds": 0.5}
DEFAULT_RESULTS_DIR = Path("edgevit-bench")


@app.command()
@user_errors
def bench(
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    models: Annotated[str, typer.Option(help="Comma-separated model names.")] = "s2aformer-t",
    runtimes: Annotated[str, typer.Option(help="Comma-separated: torch, torch:channels-last, torch:bf16, "
                                               "torch-compile, onnxruntime[:memory-pattern|:denormals], openvino[:f32|:bf16|:default], executorch (.pte, "
                                               "XNNPACK), ort (ONNX Runtime's .ort format), onnxruntime:int8, openvino:int8, "
                                               "executorch:int8 (the verified int8 exports; int8: all three) on cpu; "
                                               "torch[:fp32|:fp16], tensorrt[:fp16|:fp32] on cuda (default: "
                                               "torch,onnxruntime on cpu; torch,tensorrt on cuda; with --artifact "
                                               "the runtime of that file).")] = None,
    scenario: Annotated[str, typer.Option(help="throughput (batched images/s) or latency (batch 1 percentiles).")]
    = "throughput",
    resolutions: Annotated[str | None, typer.Option(help="Comma-separated sizes, e.g. 224,512,1024 or 256x320.")]
    = None,
    batch_size: Annotated[str | None, typer.Option(help="Images per call: one value, or one per resolution "
                                                        "(default: 8 quick / 16 --full on cpu, 256 on cuda at "
                                                        "224, same pixels per call at other sizes; 1 for "
                                                        "latency).")] = None,
    threads: Annotated[int | None, typer.Option(help="Intra-op threads (default: all cores; 1 = single-thread "
                                                     "protocol).")] = None,
    streams: Annotated[int | None, typer.Option(help="OpenVINO inference streams.")] = None,
    full: Annotated[bool, typer.Option("--full", help="Paper-grade timing protocol (3 warm-up calls + 1 s, "
                                                      ">= 20 calls and 2 s per run, 3 runs) instead of the quick "
                                                      "one.")] = False,
    paper: Annotated[str | None, typer.Option(help="Reproduce a paper's CPU speed table, e.g. s2aformer "
                                                   "(its models and columns, --full, --reference).")] = None,
    reference: Annotated[bool | None, typer.Option("--reference/--no-reference",
                                                   help="Also run OpenVINO's benchmark_app / a plain ORT session "
                                                        "on the same file (default: on with --paper).")] = None,
    iters: Annotated[int | None, typer.Option(help="Minimum timed calls per run.")] = None,
    repeats: Annotated[int | None, typer.Option(help="Timed runs per case (median and spread are reported).")]
    = None,
    warmup: Annotated[int | None, typer.Option(help="Warm-up calls (plus --warmup-seconds).")] = None,
    warmup_seconds: Annotated[float | None, typer.Option(help="Minimum warm-up time.")] = None,
    min_seconds: Annotated[float | None, typer.Option(help="Minimum timed seconds per run.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Results file (default: a new "
                                                  "edgevit-bench/bench-TIME.json; always written).")] = None,
    csv_out: Annotated[Path | None, typer.Option("--csv", help="Write the result rows as CSV.")] = None,
    artifact: Annotated[Path | None, typer.Option(help="Benchmark this exported .onnx file or IR folder "
                                                       "(model, size and batch from its metadata).")] = None,
) -> None:
    """Throughput or latency of models x runtimes x resolutions, against a measured GEMM roof.

    Exit 0 when every case ran, 1 when a case failed (its row says why; finished rows are saved), 2 on a
    usage error (checked before anything runs).
    """
    from .bench import TimingPolicy
    from .bench import run as run_bench
    from .bench.paper import protocol
    from .bench.report import to_csv
    from .bench.suite import artifact_runtime, case_count

    proto = FULL if (full or paper) else QUICK
    model_list = _split(models)
    res_list = _split(resolutions) if resolutions else None
    paper_meta: dict[str, Any] | None = None
    if paper:
        plan = protocol(paper)
        model_list, res_list = plan.models, [str(plan.resolution)]
        runtimes = runtimes or ",".join(plan.runtimes)
        reference = True if reference is None else reference
        paper_meta = {"family": plan.family, "table": plan.table, "models": plan.models, "metric": plan.metric,
                      "resolution": plan.resolution, "note": plan.note}
    if runtimes is None:
        runtimes = (artifact_runtime(artifact) if artifact is not None and artifact.exists()
                    else "torch,tensorrt" if device == "cuda" else "torch,onnxruntime")
    runtime_list = _split(runtimes)
    try:
        batches = [int(b) for b in _split(batch_size)] if batch_size else None
    except ValueError:
        raise EdgevitError(f"--batch-size takes integers, e.g. 16 or 128,32,8; got {batch_size!r}") from None
    if batches is None and proto["batch"] and device == "cpu" and scenario == "throughput" and artifact is None:
        batches = [proto["batch"]]
    pick = lambda given, key: proto[key] if given is None else given  # noqa: E731
    policy = TimingPolicy(warmup_iters=pick(warmup, "warmup"), warmup_seconds=pick(warmup_seconds, "warmup_seconds"),
                          iters=pick(iters, "iters"), min_seconds=pick(min_seconds, "min_seconds"),
                          repeats=pick(repeats, "repeats"))
    if min(policy.iters, policy.repeats) < 1 or policy.warmup_iters < 0:
        raise EdgevitError("--iters and --repeats must be at least 1, --warmup at least 0")
    json_path = json_out or DEFAULT_RESULTS_DIR / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    for path in (json_path, csv_out):
        if path is not None:
            _check_output_file(path, *(("--json", "json") if path is json_path else ("--csv", "csv")))
    total = case_count(model_list, runtime_list, device, res_list if artifact is None else None)
    streaming = not console.is_terminal

    def on_row(rep: Any) -> None:  # save what has finished, and tell a pipe about it
        data = rep.to_dict()
        if paper_meta:
            data["environment"]["paper"] = {**paper_meta, "batch": rep.rows[0].case.batch}
        _write_atomic(json_path, json.dumps(data, indent=2, default=str))
        if streaming:
            console.print(_row_line(rep.rows[-1], len(rep.rows), rep.planned), highlight=False, soft_wrap=True)

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(), console=err_console,
                  transient=True, disable=not err_console.is_terminal) as progress:
        overall = progress.add_task("benchmark", total=total)
        current: dict[str, Any] = {}

        def on_progress(case: Any, done: int, planned: int) -> None:
            if current.get("case") is not case:
                if "task" in current:
                    progress.remove_task(current["task"])
                    progress.advance(overall)
                current["case"] = case
                current["task"] = progress.add_task(
                    f"{case.model} · {case.runtime.label} · {case.input_size[0]}x{case.input_size[1]} "
                    f"· batch {case.batch}", total=planned)
            progress.update(current["task"], completed=done)

        report = run_bench(model_list, runtime_list, device=device, scenario=scenario, resolutions=res_list,
                           batches=batches, threads=threads, streams=streams, policy=policy, progress=on_progress,
                           artifact=artifact, on_row=on_row, reference=bool(reference),
                           roof_seconds=float(proto["roof_seconds"]))
    on_row(report) if report.rows and not streaming else None
    _print_bench_table(report)
    console.print(f"results written to {json_path}", highlight=False)
    if csv_out:
        _write_atomic(csv_out, to_csv(report.to_dict()))
        console.print(f"rows written to {csv_out}", highlight=False)
    if any(r.error for r in report.rows):
        raise typer.Exit(EXIT_BENCH_FAILED)


def _check_output_file(path: Path, flag: str, kind: str = "json") -> None:
    """Before the run: an output file (``kind``: json, csv, markdown, png) must be a writable file path, and
    never a file edgevit did not write."""
    from .bench.report import written_by_edgevit

    if path.is_dir():
        raise EdgevitError(f"{flag} {str(path)!r} is a directory; give a file name, e.g. {path / 'bench.json'}")
    parent = next((p for p in (path.parent, *path.parent.parents) if p.exists()), Path("."))
    if not parent.is_dir():
        raise EdgevitError(f"{flag} {str(path)!r}: {str(parent)!r} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise EdgevitError(f"{flag} {str(path)!r} is not writable; choose another path")
    if path.exists() and path.stat().st_size and not written_by_edgevit(path, kind):
        what = {"json": "results file", "csv": "results CSV", "markdown": "report", "png": "plot"}[kind]
        raise EdgevitError(f"{flag} {str(path)!r} exists and is not an edgevit {what}; refusing to "
                           "overwrite it (choose a new name)")


# Table abbreviations (the table must fit 100 columns; the legend under it spells them out).
_RUNTIME_ABBREV = {"torch": "pt", "torch:channels-last": "pt:cl", "torch:bf16": "pt:bf16", "torch-compile": "pt:comp",
                   "onnxruntime": "ort", "onnxruntime:memory-pattern": "ort:mp", "onnxruntime:denormals": "ort:dn", "openvino:f32": "ov:f32", "openvino:default": "ov:def",
                   "openvino:bf16": "ov:bf16", "torch-cuda:fp32": "cu:fp32", "torch-cuda:fp16": "cu:fp16",
                   "tensorrt:fp16": "trt:fp16", "tensorrt:fp32": "trt:fp32", "onnxruntime:int8": "ort:i8",
                   "openvino:int8": "ov:i8", "executorch:xnnpack": "et", "executorch:xnnpack-int8": "et:i8"}
_LEGEND = ("pt = PyTorch eager (cl: channels-last, bf16: autocast, comp: torch.compile/inductor), ort = ONNX "
           "Runtime (mp: with its memory pattern, dn: subnormals kept, not flushed), ov = OpenVINO (def: the device's default precision), et = ExecuTorch (XNNPACK), i8 = the int8 "
           "export, cu = PyTorch CUDA, trt = TensorRT · "
           "img/s = median of runs, ± = (max-min)/median, p50 = median latency of a call (ms) · %roof = all-op GMAC/s over the measured GEMM roof of "
           "that precision · ref/s = benchmark_app / plain ORT session on the same file · ld / inf MB = RSS "
           "growth while loading / peak while running")


def _row_line(row: Any, done: int, total: int) -> str:
    c = row.case
    head = f"[{done}/{total}] {c.model} · {c.runtime.label} · {c.input_size[0]}x{c.input_size[1]} b{c.batch}"
    if row.error:
        return f"{head}: error: {row.error}"
    m = row.measurement
    roof = f" · {100 * row.roof_fraction:.1f}% roof" if row.roof_fraction else ""
    return f"{head} · {row.precision}: {m.images_per_s:.2f} img/s ±{100 * m.spread:.1f}% · p50 {m.pooled.p50:.1f} ms{roof}"


def _num(v: float | None, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def _sig(v: float | None) -> str:
    """At least 4 significant digits in at most 7 characters: 12345, 1234.5, 123.45, 0.1234 (JSON has all)."""
    if v is None:
        return "—"
    return f"{v:.0f}" if v >= 10_000 else f"{v:.1f}" if v >= 1000 else f"{v:.2f}" if v >= 1 else f"{v:.4f}"


def _print_bench_table(report: Any) -> None:
    from rich import box

    env = report.environment
    rows = report.rows
    where = env.get("gpu") if env.get("device") == "cuda" else f"{env['cpu_model']} · {env['threads']} threads"
    shared_shape = len({(r.case.input_size, r.case.batch) for r in rows}) == 1
    title = f"{env['scenario']} · {where}"
    if shared_shape and rows:
        c = rows[0].case
        title += f" · {c.input_size[0]}x{c.input_size[1]} · batch {c.batch}"
    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1),
                  collapse_padding=True)
    cols = ["model", "rt", "prec"] + ([] if shared_shape else ["in", "b"]) + [
        "img/s", "±%", "p50", "%roof", "ref/s", "ld MB", "inf MB"]
    for col in cols:
        # never an ellipsis: if a terminal is narrower than the table, a cell folds onto a second line
        table.add_column(col, justify="left" if col in ("model", "rt", "prec") else "right", overflow="fold")
    for row in rows:
        c = row.case
        base = [c.model, _RUNTIME_ABBREV.get(c.runtime.label, c.runtime.label), row.precision or "—"]
        if not shared_shape:
            base += [f"{c.input_size[0]}x{c.input_size[1]}", str(c.batch)]
        if row.measurement is None:
            table.add_row(*base, "[red]error ↓[/]", *[""] * (len(cols) - len(base) - 1))
            continue
        m, p = row.measurement, row.measurement.pooled
        ref = row.reference.get("images_per_s") if row.reference else None
        mem = row.cuda_peak_mb if row.cuda_peak_mb is not None else row.infer_mb
        table.add_row(*base, _sig(m.images_per_s), f"{100 * m.spread:.1f}", _sig(p.p50),
                      _num(100 * row.roof_fraction if row.roof_fraction else None, ".1f"), _sig(ref),
                      _num(row.load_mb, ".0f"), _num(mem, ".0f"))
    console.print(table, width=min(console.width, 100))
    for row in rows:
        if row.error:
            console.print(f"[red]error[/] {row.case.model} · {row.case.runtime.label}: {escape(row.error)}",
                          highlight=False)
        elif row.details.get("kernels"):
            console.print(f"{row.case.model} · {row.case.runtime.label}: conv/matmul layers by type and ISA, as "
                          f"OpenVINO reports them: {row.details['kernels']}", highlight=False)
        elif row.case.runtime.compile:
            console.print(f"{row.case.model} · {row.case.runtime.label}: compile + first call "
                          f"{row.first_call_seconds:.1f} s (not in img/s)", highlight=False)
        if row.reference and row.reference.get("error"):
            console.print(f"{row.case.model} · {row.case.runtime.label}: {row.reference['tool']} failed: "
                          f"{escape(str(row.reference['error']))}", highlight=False)
    roofs = env.get("roof") or {}
    if roofs:
        console.print("GEMM roof (GMAC/s, measured / theoretical): " + ", ".join(
            f"{p} {_num(r['gmacs_per_s'], '.0f')} / {_num(r['theoretical']['gmacs_per_s'], '.0f')}"
            for p, r in roofs.items()), highlight=False, soft_wrap=True)
        src = roofs.get("fp32", next(iter(roofs.values())))["theoretical"]["source"]
        console.print(f"[dim]theoretical fp32: {src}[/]", highlight=False, soft_wrap=True)
    console.print(f"[dim]{_LEGEND}[/]", highlight=False, width=min(console.width, 100))


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@app.command("profile")
@user_errors
def profile_cmd(
    model: Annotated[str | None, typer.Argument(help="Registry model (exported into the benchmark cache).")] = None,
    runtime: Annotated[str, typer.Option(help="onnxruntime, openvino:f32 or openvino:bf16.")] = "onnxruntime",
    input_size: Annotated[str | None, typer.Option(help="e.g. 224 or 256x320 (default: the model's).")] = None,
    batch: Annotated[int, typer.Option(help="Images per call.")] = 1,
    threads: Annotated[int | None, typer.Option(help="Intra-op threads (default: all cores).")] = None,
    calls: Annotated[int, typer.Option(help="Profiled calls (times are their mean).")] = 10,
    warmup: Annotated[int, typer.Option(help="Unprofiled calls first.")] = 2,
    top: Annotated[int, typer.Option(help="Rows in the table (the JSON has all).")] = 15,
    by: Annotated[str, typer.Option(help="Rows per op 'kind', or per kind and node input/output 'shape'.")] = "kind",
    artifact: Annotated[Path | None, typer.Option(help="Profile this exported .onnx file or IR folder.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the whole profile to this file.")] = None,
) -> None:
    """Where one inference's time goes, per op kind (or kind and shapes) and kernel, from the runtime's own
    profiler."""
    from .bench.profile import profile

    if json_out:
        _check_output_file(json_out, "--json")
    if top < 1:
        raise EdgevitError("--top must be at least 1")
    if by not in ("kind", "shape"):
        raise EdgevitError(f"--by takes 'kind' or 'shape', not {by!r}")
    by_shape = by == "shape"
    with _progress() as progress:
        progress.add_task(f"profiling {model or artifact} in {runtime}", total=None)
        rep = profile(model, runtime, input_size=input_size, batch=batch, threads=threads, calls=calls,
                      warmup=warmup, artifact=artifact, by_shape=by_shape)
    table = Table(title=f"{rep.model} · {rep.runtime} ({rep.precision}) · {rep.input_size[0]}x{rep.input_size[1]} "
                        f"· batch {rep.batch} · {rep.threads or 'all'} threads · mean of {rep.calls} calls")
    columns = ("op", "kernel", *(("shapes",) if by_shape else ()), "ms/call", "share", "nodes", "MB/call", "GB/s",
               "GMAC/s", "floor ms")
    for col in columns:
        table.add_column(col, justify="left" if col in ("op", "kernel", "shapes") else "right")
    for t in rep.ops[:top]:
        floor = rep.floor_ms(t)
        table.add_row(t.op, t.kernel, *((t.shapes,) if by_shape else ()), f"{t.ms:.2f}",
                      f"{t.ms / rep.op_ms:.1%}" if rep.op_ms else "—", str(t.nodes),
                      f"{t.bytes / 2**20:.1f}" if t.bytes else "—", f"{t.bytes / t.ms / 1e6:.1f}" if t.bytes and t.ms
                      else "—", f"{t.macs / t.ms / 1e6:.1f}" if t.macs and t.ms else "—",
                      f"{floor:.2f}" if floor is not None else "—")
    console.print(table)
    rest = rep.ops[top:]
    if rest:
        rows = "rows" if by_shape else "op kinds"
        console.print(f"{len(rest)} more {rows}: {sum(t.ms for t in rest):.2f} ms/call", highlight=False)
    console.print(f"ops {rep.op_ms:.2f} ms/call of {rep.wall_ms:.2f} ms wall (profiler overhead included; "
                  "time with `edgevit bench`)", highlight=False)
    floors = [f"memory floor {rep.memory_floor_ms:.2f} ms (bytes each op moves at this machine's measured "
              "bandwidth for that size)" if rep.memory_floor_ms is not None else "",
              f"compute floor {rep.compute_floor_ms:.2f} ms ({rep.macs / 1e9:.2f} GMAC at the measured fp32 GEMM "
              f"roof {rep.gemm_roof_gmacs_per_s:.0f} GMAC/s)" if rep.compute_floor_ms is not None else ""]
    if any(floors):
        console.print("; ".join(f for f in floors if f), highlight=False)
    roofline = rep.roofline_floor_ms
    if roofline:
        console.print(f"roofline floor {roofline:.2f} ms (each row at the larger of its memory floor and its "
                      f"{rep.executed_macs / 1e9:.2f} executed GMAC at the GEMM roof): the ops take "
                      f"{rep.op_ms / roofline:.2f}x it", highlight=False)
    if json_out:
        _write_atomic(json_out, json.dumps({"profile": rep.to_dict()}, indent=2, default=str))
        console.print(f"profile written to {json_out}", highlight=False)


@app.command("bench-scan")
@user_errors
def bench_scan(
    length: Annotated[int, typer.Option(help="Sequence length L (3136 = 56x56, A2Mamba stage 1 at 224).")] = 3136,
    channels: Annotated[str, typer.Option(help="Comma-separated channel counts.")] = "32,48",
    threads: Annotated[int | None, typer.Option(help="Threads for torch and ONNX Runtime.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the results to this file.")] = None,
) -> None:
    """Time the selective scan alone: reference loop vs fast eager kernel vs ONNX Runtime (both scan modes)."""
    from .bench.ops import selective_scan_benchmark

    try:
        chans = [int(c) for c in _split(channels)]
    except ValueError:
        raise EdgevitError(f"--channels takes integers, e.g. 32,48; got {channels!r}") from None
    if length < 1 or not chans or min(chans) < 1:
        raise EdgevitError("--length and --channels must be positive")
    if json_out:
        _check_output_file(json_out, "--json")
    with _progress() as progress:
        progress.add_task(f"timing the selective scan at L={length}", total=None)
        data = selective_scan_benchmark(length, chans, threads=threads)
    table = Table(title=f"selective scan, L={length}, batch 1, {data['threads']} threads (ms, median)")
    forms = ("reference_loop_fp64", "eager_chunked", "ort_decomposed", "ort_custom")
    table.add_column("channels", justify="right")
    for form in forms:
        table.add_column(form, justify="right")
    for case in data["cases"]:  # type: ignore[union-attr]
        cells = []
        for form in forms:
            r = case.get(form)
            cells.append("—" if r is None else f"{r['ms_p50']:.2f}" + (f" (err {r['max_rel_err']:.1e})"
                                                                     if "max_rel_err" in r else ""))
        table.add_row(str(case["channels"]), *cells)
    console.print(table)
    if json_out:
        _write_atomic(json_out, json.dumps(data, indent=2, default=str))
        console.print(f"results written to {json_out}")


@app.command()
@user_errors
def report(
    results: Annotated[list[Path], typer.Argument(help="JSON written by `edgevit bench --json`: one file or several "
                                                       "(e.g. a shell glob), rendered one after another.")],
    compare_paper: Annotated[bool, typer.Option(help="Add the papers' figures and our/paper ratios.")] = False,
    plot: Annotated[Path | None, typer.Option(help="Write a PNG plot (throughput per model/runtime, vs params).")]
    = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the Markdown here too.")] = None,
) -> None:
    """Render benchmark results as Markdown tables, optionally beside the papers' figures, and plot them (several
    files: a table per file, one plot of all their rows)."""
    from .bench import report as rep

    for path, flag, kind in ((output, "--output", "markdown"), (plot, "--plot", "png")):
        if path is not None:
            _check_output_file(path, flag, kind)
    runs = [rep.load_results(path) for path in results]  # every file checked before anything is written
    text = rep.markdown_runs([(str(path), data) for path, data in zip(results, runs)], compare_paper=compare_paper)
    typer.echo(text)
    if output:
        _write_atomic(output, f"{text}\n{rep.REPORT_MARK}\n")
    if plot:
        console.print(f"plot written to {rep.plot(rep.merged_rows(runs), plot)}")


def _take_debug_flag(args: list[str]) -> bool:
    """Remove ``--debug`` wherever it appears before ``--`` (the root option, accepted after a command too)."""
    end = args.index("--") if "--" in args else len(args)
    found = _DEBUG_FLAG in args[:end]
    args[:end] = [a for a in args[:end] if a != _DEBUG_FLAG]
    return found


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _environment_error(exc: BaseException) -> str | None:
    """A line for failures caused by the machine, not by edgevit: no memory, a full or read-only disk."""
    from .artifact import WRITE_ERRNOS

    if isinstance(exc, MemoryError):
        return "out of memory; try a smaller --input-size or --batch, or close other programs"
    if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
        where = f"{exc.filename}: " if exc.filename else ""
        return f"cannot write {where}{exc.strerror or exc}; free some space or choose a writable --output"
    return None


def main(argv: list[str] | None = None) -> None:
    """The ``edgevit`` entry point: applies the exit codes of :mod:`edgevit.errors` to whatever the command
    raises, so every mistake is one line and only a bug (exit 3) mentions a traceback, shown with --debug."""
    try:
        from typer._click import exceptions as usage  # typer >= 0.24 vendors click and raises its exceptions
    except ImportError:  # pragma: no cover - older typer
        from click import exceptions as usage  # type: ignore[no-redef]

    args = list(sys.argv[1:] if argv is None else argv)
    _state["main_flag"] = _take_debug_flag(args)
    _state["debug"] = debug = _state["main_flag"] or _debug_from_environment()
    try:
        code = app(args=args, prog_name="edgevit", standalone_mode=False)
    except usage.NoArgsIsHelpError as exc:  # bare `edgevit` or `edgevit CMD`: the help, exit 2
        exc.show()
        code = exc.exit_code
    except usage.ClickException as exc:  # usage errors: bad option, missing argument, bad value
        where = f"; see: {exc.ctx.command_path} --help" if getattr(exc, "ctx", None) is not None else ""
        _print_error(exc.format_message().replace("\n", " ") + where)
        code = exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        code = errors.EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the one place every other exception is classified
        if debug:
            import traceback

            traceback.print_exc()
        line = _environment_error(exc)
        if isinstance(exc, EdgevitError):
            _print_error(str(exc))
            code = exc.exit_code
        elif line is not None:
            _print_error(line)
            code = errors.EXIT_USER_ERROR
        else:
            _print_error(f"internal error ({_first_line(exc)}); this is a bug in edgevit. "
                         f"Re-run with {_DEBUG_FLAG} to see the traceback, and please report it")
            code = errors.EXIT_BUG
    finally:
        _state["main_flag"] = False
    if code == errors.EXIT_INTERRUPTED:
        _print_error("interrupted; nothing half-written was left behind")
    sys.exit(code or 0)


if __name__ == "__main__":
    main()
