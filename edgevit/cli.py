"""The ``edgevit`` command line: list | info | export | verify | bench | report.

Tables (rich) are for people, ``--json`` is for scripts. A user error prints one line and exits with 2;
a failed verification exits with 1.
"""

from __future__ import annotations

import functools
from dataclasses import asdict
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import __version__
from .errors import EdgevitError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Export, verify and benchmark efficient vision backbones on every runtime.")
# Piped output (logs, CI) gets a wide console so tables are not truncated to rich's 80-column default.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
F = TypeVar("F", bound=Callable[..., Any])

EXIT_USER_ERROR = 2
EXIT_VERIFY_FAILED = 1


def user_errors(fn: F) -> F:
    """Turn :class:`EdgevitError` into one red line and a non-zero exit instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EdgevitError as exc:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_VERIFY_FAILED if type(exc).__name__ == "VerificationError" else EXIT_USER_ERROR)

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
                                                help="Print the version and exit.")] = False) -> None:
    pass


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
    fmt = lambda v, f: "—" if v is None else format(v, f)  # noqa: E731
    for r in rows:
        cells = [r["name"], "x".join(map(str, r["input_size"])), fmt(r["paper_params_m"], ".2f"),
                 fmt(r["paper_gmacs"], ".3g"), fmt(r["paper_top1"], ".1f")]
        if measure:
            cells += [f"{r['params_m']:.2f}", f"{r['gmacs']:.3f}"]
        table.add_row(*cells, r["architecture"])
    console.print(table)


@app.command()
@user_errors
def info(
    model: Annotated[str, typer.Argument(help="Model name, e.g. s2aformer-t.")],
    input_size: Annotated[str | None, typer.Option(help="H or HxW for the MAC count.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Model card, measured params and MACs (by kind of op) and the paper's figures."""
    from .models import count_macs, count_params, create_model, get_model_card
    from .models.paper import figures_for
    from .pipeline import parse_input_size

    card = get_model_card(model)
    size = parse_input_size(input_size, card)
    net = create_model(card.name)
    macs = count_macs(net, size)
    data = card.to_dict()
    data["paper_figures"] = [asdict(f) for f in figures_for(card.name)]
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
        ("input", f"{card.input_size[0]}x{card.input_size[1]} (multiple of {card.input_multiple})"),
        ("mean / std", f"{card.mean} / {card.std}"),
        ("params", f"{count_params(net) / 1e6:.3f} M (paper {rep.params_m} M)"),
        (f"GMACs @{size[0]}x{size[1]}", f"{ours_macs:.3f} counted as {rep.macs_convention} (paper {rep.gmacs} @"
                                        f"{rep.input_size}); all ops {macs.total / 1e9:.3f}"),
        ("MACs by kind", ", ".join(f"{k} {v / 1e9:.3f} G" for k, v in sorted(macs.by_kind.items()))),
        ("top-1 (paper)", f"{rep.top1}"),
        ("speed (paper)", "\n".join(f"{f.value:g} {f.unit} · {f.runtime} on {f.hardware} ({f.table}, "
                                     f"{f.resolution}px, batch {f.batch or 'not stated'})"
                                     for f in figures_for(card.name)) or "—"),
        ("source", rep.source),
        ("notes", card.notes),
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
    to: Annotated[str, typer.Option("--to", help="Artifact format: onnx, openvino (an IR folder) or tensorrt "
                                                 "(an engine; needs an NVIDIA GPU and edgevit[tensorrt]).")] = "onnx",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Artifact path (default artifacts/...).")] = None,
    input_size: Annotated[str | None, typer.Option(help="H or HxW (default: the model's).")] = None,
    batch: Annotated[int, typer.Option(help="Static batch size.")] = 1,
    dynamic_batch: Annotated[bool, typer.Option(help="Make the batch axis dynamic (overrides --batch).")] = False,
    weights: Annotated[str | None, typer.Option(help="Local checkpoint (.pth/.pt/.safetensors).")] = None,
    features_only: Annotated[bool, typer.Option(help="Export the four stage feature maps, no classifier.")] = False,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Check parity with PyTorch in the format's "
                                                                       "runtime (and the intermediate ONNX's).")] = True,
    rtol: Annotated[float | None, typer.Option(help="Max abs error / max |reference| allowed (default: the "
                                                    "format's for its precision: 1e-4 fp32, 1e-2 fp16, 0.5 int8).")
                    ] = None,
    atol: Annotated[float, typer.Option(help="Absolute slack added to rtol * max |reference|.")] = 0.0,
    option: Annotated[list[str] | None, typer.Option("--option", help="Model constructor option KEY=VALUE, "
                                                     "repeatable (e.g. sampler=manual for MAT).")] = None,
    # Format options: None means "not given", so a flag the format does not take is refused, never ignored.
    opset: Annotated[int | None, typer.Option(help="onnx/openvino/tensorrt: ONNX opset (default 18).")] = None,
    simplify: Annotated[bool | None, typer.Option("--simplify/--no-simplify", help="onnx/openvino/tensorrt: run "
                                                                                   "onnxslim (default on).")] = None,
    scan: Annotated[str | None, typer.Option(help="onnx/openvino/tensorrt, A2Mamba: selective scans as decomposed "
                                                  "standard ops (default) or custom (one edgevit.SelectiveScan node "
                                                  "each, body shipped as an ONNX function).")] = None,
    precision: Annotated[str | None, typer.Option(help="openvino: fp32 (default), fp16 or int8 (NNCF); tensorrt: "
                                                       "fp16 (default) or fp32.")] = None,
    embed_preprocess: Annotated[bool | None, typer.Option("--embed-preprocess", help="openvino: take uint8 NHWC "
                                                          "RGB, normalise inside.")] = None,
    calib_images: Annotated[Path | None, typer.Option(help="openvino int8: folder of calibration images "
                                                            "(default: a synthetic set).")] = None,
    opt_batch: Annotated[int | None, typer.Option(help="tensorrt --dynamic-batch: batch the profile is tuned for "
                                                       "(default --max-batch).")] = None,
    max_batch: Annotated[int | None, typer.Option(help="tensorrt --dynamic-batch: largest batch of the profile.")
                         ] = None,
    workspace: Annotated[float | None, typer.Option(help="tensorrt: builder workspace in GB (default 4).")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Export a model; the artifact appears under its name only once it has been verified."""
    from . import pipeline
    from .formats import format_options

    flags = {"opset": opset, "simplify": simplify, "scan": scan, "precision": precision,
             "embed_preprocess": embed_preprocess, "calib_images": calib_images, "opt_batch": opt_batch,
             "max_batch": max_batch, "workspace": workspace}
    given = {k: v for k, v in flags.items() if v is not None}  # only what the user typed
    fopts = format_options(to, **given)
    common = pipeline.ExportOptions(input_size=input_size, batch=batch, dynamic_batch=dynamic_batch, weights=weights,
                                    features_only=features_only, model_options=pipeline.parse_model_options(option),
                                    verify=verify, rtol=rtol, atol=atol)
    with _progress() as progress:
        progress.add_task(f"exporting {model} to {to}" + (" and verifying" if verify else ""), total=None)
        report = pipeline.export(model, to, output, common, fopts)
    result = {"path": str(report.path), "model": report.metadata.model, "input_size": list(report.metadata.input_size),
              "batch": report.metadata.batch, "outputs": list(report.metadata.output_names),
              "size_mb": round(report.size_bytes / 1e6, 2), "seconds": round(report.seconds, 1),
              "verified": report.parity is not None}
    result.update({k: report.metadata.extra[k] for k in ("format", "precision", "preprocess", "calibration", "scan")
                   if k in report.metadata.extra})
    if report.parity is not None:
        result.update(_parity_dict(report.parity))
    if as_json:
        _print_json(result)
        return
    console.print(f"[green]✓[/] wrote {report.path} ({result['size_mb']} MB, {result['seconds']} s)")
    if "calibration" in result:
        console.print(f"  int8 calibration: {result['calibration']}", highlight=False)
    if report.parity is not None:
        console.print(f"  verified in {report.parity.candidate}: {report.parity.summary()}")


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
    rtol: Annotated[float, typer.Option(help="Max abs error / max |reference| allowed.")] = 1e-4,
    atol: Annotated[float, typer.Option(help="Absolute slack added to rtol * max |reference|.")] = 0.0,
    threads: Annotated[int | None, typer.Option(help="Threads for both runtimes.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Run the same seeded inputs through PyTorch and the artifact; exit 1 above tolerance."""
    from . import pipeline

    with _progress() as progress:
        progress.add_task(f"verifying {artifact}", total=None)
        report = pipeline.verify(model, artifact, backend=runtime, weights=weights, batch=batch, seed=seed,
                                 atol=atol, rtol=rtol, threads=threads)
    if as_json:
        _print_json(_parity_dict(report))
    else:
        table = Table(title=f"{artifact} vs PyTorch ({report.candidate}, batch {report.batch})")
        for col in ("output", "max abs", "max |ref|", "max rel", "mean abs", "ok"):
            table.add_column(col, justify="right")
        for o in report.outputs:
            table.add_row(o.name, f"{o.max_abs:.3e}", f"{o.max_ref:.3e}", f"{o.rel:.3e}", f"{o.mean_abs:.3e}",
                          "[green]✓[/]" if o.passes(atol, rtol) else "[red]✗[/]")
        console.print(table)
        if report.top1_agreement is not None:
            console.print(f"top-1 agreement: {report.top1_agreement:.1%}")
        verdict = "[green]PASS[/]" if report.passed else "[red]FAIL[/]"
        console.print(f"{verdict} at rtol={rtol:g} atol={atol:g}")
    if not report.passed:
        raise typer.Exit(EXIT_VERIFY_FAILED)


@app.command()
@user_errors
def bench(
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    models: Annotated[str, typer.Option(help="Comma-separated model names.")] = "s2aformer-t",
    runtimes: Annotated[str, typer.Option(help="Comma-separated: torch, onnxruntime, openvino[:f32|:bf16|:default] "
                                               "on cpu; torch[:fp32|:fp16], tensorrt[:fp16|:fp32] on cuda "
                                               "(default: torch,onnxruntime on cpu; torch,tensorrt on cuda).")]
    = None,
    scenario: Annotated[str, typer.Option(help="throughput (batched images/s) or latency (batch 1 percentiles).")]
    = "throughput",
    resolutions: Annotated[str | None, typer.Option(help="Comma-separated sizes, e.g. 224,512,1024 or 256x320.")]
    = None,
    batch_size: Annotated[str | None, typer.Option(help="Images per call: one value, or one per resolution "
                                                        "(default: 16 on cpu / 256 on cuda at 224, same pixels "
                                                        "per call at other sizes; 1 for latency).")] = None,
    threads: Annotated[int | None, typer.Option(help="Intra-op threads (default: all cores; 1 = single-thread "
                                                     "protocol).")] = None,
    streams: Annotated[int | None, typer.Option(help="OpenVINO inference streams.")] = None,
    iters: Annotated[int, typer.Option(help="Minimum timed calls per run.")] = 10,
    repeats: Annotated[int, typer.Option(help="Timed runs per case (median and spread are reported).")] = 3,
    warmup: Annotated[int, typer.Option(help="Warm-up calls (plus --warmup-seconds).")] = 3,
    warmup_seconds: Annotated[float, typer.Option(help="Minimum warm-up time.")] = 1.0,
    min_seconds: Annotated[float, typer.Option(help="Minimum timed seconds per run.")] = 1.0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write results and environment to this file.")] = None,
    csv_out: Annotated[Path | None, typer.Option("--csv", help="Write the result rows as CSV.")] = None,
    artifact: Annotated[Path | None, typer.Option(help="Benchmark this exported .onnx file or IR folder "
                                                       "(model, size and batch from its metadata).")] = None,
) -> None:
    """Throughput or latency of models x runtimes x resolutions, with memory, efficiency and environment."""
    from .bench import TimingPolicy
    from .bench import run as run_bench
    from .bench.report import to_csv
    from .bench.suite import case_count

    model_list = _split(models)
    runtime_list = _split(runtimes or ("torch,tensorrt" if device == "cuda" else "torch,onnxruntime"))
    res_list = _split(resolutions) if resolutions else None
    try:
        batches = [int(b) for b in _split(batch_size)] if batch_size else None
    except ValueError:
        raise EdgevitError(f"--batch-size takes integers, e.g. 16 or 128,32,8; got {batch_size!r}") from None
    if min(iters, repeats) < 1:
        raise EdgevitError("--iters and --repeats must be at least 1")
    policy = TimingPolicy(warmup_iters=warmup, warmup_seconds=warmup_seconds, iters=iters, min_seconds=min_seconds,
                          repeats=repeats)
    total = case_count(model_list, runtime_list, device, res_list if artifact is None else None)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(), console=err_console,
                  transient=True) as progress:
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
                           artifact=artifact)
    _print_bench_table(report)
    data = report.to_dict()
    for path, text in ((json_out, lambda: json.dumps(data, indent=2, default=str)), (csv_out, lambda: to_csv(data))):
        if path:
            _write_atomic(path, text())
            console.print(f"results written to {path}")


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _print_bench_table(report: Any) -> None:
    env = report.environment
    where = env.get("gpu") if env.get("device") == "cuda" else f"{env['cpu_model']} · {env['threads']} threads"
    table = Table(title=f"{env['scenario']} benchmark · {where}",
                  caption=f"ISA: {' '.join(env['isa_flags'])} · torch CPU kernels: {env['torch_cpu_capability']}"
                          f" · images/s = median of runs (spread = max-min over median)")
    cols = ("model", "runtime", "precision", "input", "batch", "images/s", "spread", "p50 ms", "p90 ms", "p99 ms",
            "GMAC/s", "% peak", "peak MB")
    for col in cols:
        table.add_column(col, justify="left" if col in ("model", "runtime", "precision") else "right", no_wrap=True)
    for row in report.rows:
        c = row.case
        base = [c.model, c.runtime.label, row.precision or "—", f"{c.input_size[0]}x{c.input_size[1]}", str(c.batch)]
        if row.measurement is None:
            table.add_row(*base, "[red]error ↓[/]", *[""] * (len(cols) - 6))
            continue
        m, p = row.measurement, row.measurement.pooled
        mem = row.cuda_peak_mb if row.cuda_peak_mb is not None else row.peak_rss_mb
        table.add_row(*base, f"{m.images_per_s:.1f}", f"{100 * m.spread:.1f}%", f"{p.p50:.2f}", f"{p.p90:.2f}",
                      f"{p.p99:.2f}", f"{row.achieved_gmacs_per_s:.1f}",
                      f"{100 * row.peak_fraction:.1f}" if row.peak_fraction else "—",
                      f"{mem:.0f}" if mem is not None else "—")
    console.print(table)
    for row in report.rows:
        if row.error:
            console.print(f"[red]error[/] {row.case.model} · {row.case.runtime.label}: {escape(row.error)}", highlight=False)
    assumptions = sorted({r.peak_assumption for r in report.rows if r.peak_assumption})
    for a in assumptions:
        console.print(f"[dim]peak assumed: {a}[/]", highlight=False)


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
    results: Annotated[Path, typer.Argument(help="JSON written by `edgevit bench --json`.")],
    compare_paper: Annotated[bool, typer.Option(help="Add the papers' figures and our/paper ratios.")] = False,
    plot: Annotated[Path | None, typer.Option(help="Write a PNG plot (throughput per model/runtime, vs params).")]
    = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the Markdown here too.")] = None,
) -> None:
    """Render benchmark results as a Markdown table, optionally beside the papers' figures, and plot them."""
    from .bench import report as rep

    data = rep.load_results(results)
    text = rep.markdown(data, compare_paper=compare_paper)
    typer.echo(text)
    if output:
        _write_atomic(output, text)
    if plot:
        console.print(f"plot written to {rep.plot(data, plot)}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
