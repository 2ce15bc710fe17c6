"""Turn benchmark JSON into what people read: Markdown (with the papers' figures beside ours), CSV, plots."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import matplotlib.figure

from ..errors import ArtifactError
from ..models.paper import PaperFigure, figures_for
from .paper import paper_layout

# Which paper column a measured runtime is compared with (the paper's "CPU" column is PyTorch on CPU, ...).
_PAPER_RUNTIME = {"torch": "torch", "torch-cuda:fp32": "torch-cuda", "torch-cuda:fp16": "torch-cuda",
                  "onnxruntime": "onnxruntime", "tensorrt:fp16": "torch-cuda", "tensorrt:fp32": "torch-cuda"}

CSV_FIELDS = ("model", "runtime", "precision", "scenario", "input_size", "batch", "threads", "images_per_s",
              "spread", "latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "params_m", "gmacs_per_image",
              "macs_convention", "gmacs_per_image_paper", "paper_macs_convention", "achieved_gmacs_per_s",
              "roof_precision", "roof_gmacs_per_s", "roof_fraction", "peak_gmacs_per_s", "peak_fraction",
              "load_mb", "infer_mb", "peak_rss_mb", "first_call_seconds", "cuda_peak_mb", "error")


def load_results(path: str | Path) -> dict:
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"cannot read benchmark results {str(p)!r}: {exc}") from exc
    if not isinstance(data, dict) or "results" not in data:
        raise ArtifactError(f"{str(p)!r} is not an `edgevit bench --json` file (no 'results')")
    return data


def paper_figure(row: dict) -> PaperFigure | None:
    """The paper's figure for the same model, runtime class, resolution and kind of measurement
    (throughput scenario: images/s; latency scenario: ms), if it reports one."""
    runtime = _PAPER_RUNTIME.get(row["runtime"])
    if runtime is None:
        return None
    res = row["input_size"][0] if row["input_size"][0] == row["input_size"][1] else None
    for fig in figures_for(row["model"], row.get("scenario", "throughput")):
        if fig.runtime == runtime and fig.resolution == res:
            return fig
    return None


def _fmt(v: object, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def markdown(data: dict, compare_paper: bool = False) -> str:
    env = data["environment"]
    libs = ", ".join(f"{k} {v}" for k, v in env.get("libraries", {}).items())
    lines = []
    if compare_paper:
        layout = paper_layout(data)
        if layout:
            lines += [layout]
    lines += [
        f"Measured on {env.get('cpu_model')} ({env.get('logical_cores')} logical cores, ISA "
        f"{' '.join(env.get('isa_flags', []))}), {env.get('threads')} threads"
        + (f", GPU {env['gpu']}" if env.get("gpu") else "") + f"; {libs}.",
        "",
    ]
    head = ["model", "runtime", "precision", "input", "batch", "images/s", "spread", "p50 ms", "p99 ms",
            "GMAC/s (all ops)", "% measured roof", "% theoretical", "load MB", "inference MB", "reference images/s"]
    if compare_paper:
        head += ["GMACs (paper convention)", "paper", "ours / paper", "paper hardware"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes: dict[str, str] = {}
    for r in data["results"]:
        size = "x".join(map(str, r["input_size"]))
        if r.get("error"):
            cells = [r["model"], r["runtime"], r.get("precision") or "—", size, str(r["batch"]),
                     f"error: {r['error']}"] + [""] * (len(head) - 6)
            lines.append("| " + " | ".join(cells) + " |")
            continue
        pct = lambda key: _fmt(100 * r[key] if r.get(key) else None, ".1f")  # noqa: E731
        ref = r.get("reference") or {}
        kernels = (r.get("details") or {}).get("kernels")
        cells = [r["model"], r["runtime"], (r.get("precision") or "—") + (f" ({kernels})" if kernels else ""), size,
                 str(r["batch"]), _fmt(r.get("images_per_s"), ".2f"), _fmt(100 * r["spread"] if r.get("spread") is not None else None,
                                                          ".1f") + "%",
                 _fmt(r.get("latency_ms_p50"), ".2f"), _fmt(r.get("latency_ms_p99"), ".2f"),
                 _fmt(r.get("achieved_gmacs_per_s"), ".1f"), pct("roof_fraction"), pct("peak_fraction"),
                 _fmt(r.get("load_mb"), ".0f"), _fmt(r.get("infer_mb"), ".0f"),
                 (f"{ref['images_per_s']:.2f} ({ref['tool']})" if ref.get("images_per_s") else
                  f"failed ({ref['tool']})" if ref else "—")]
        if compare_paper:
            conv = r.get("paper_macs_convention")
            cells.append(f"{r['gmacs_per_image_paper']:.3f} ({conv})" if r.get("gmacs_per_image_paper") else "—")
            fig = paper_figure(r)
            if fig is None:
                cells += ["—", "—", "—"]
            else:
                ours = r["images_per_s"] if fig.metric == "throughput" else r["latency_ms_p50"]
                ratio = ours / fig.value
                batch = f"batch {fig.batch}" if fig.batch else "batch n/s"
                cells += [f"{fig.value:g} {fig.unit}", f"{ratio:.2f}", f"{fig.hardware} ({fig.table}, {batch})"]
                if fig.note:
                    notes[f"{fig.family} {fig.table}"] = fig.note
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for p, roof in (env.get("roof") or {}).items():
        th = roof["theoretical"]
        lines.append(f"GEMM roof {p}: measured {_fmt(roof['gmacs_per_s'], '.1f')} GMAC/s ({roof['library']}, "
                     f"{roof['gemm']}, {roof['threads']} threads); theoretical {_fmt(th['gmacs_per_s'], '.1f')} "
                     f"GMAC/s = {th['source']}.")
    lines.append("GMAC/s and both percentages count every op (all-op MACs); the paper column counts as the "
                 "paper did. Memory: load = RSS growth while the runtime loaded the artifact (exported before); "
                 "inference = RSS peak while running above the loaded state.")
    for where, note in notes.items():
        lines.append(f"{where}: {note}.")
    if compare_paper:
        lines.append("Ratios compare different machines: read them as a profile, not as a reproduction.")
    return "\n".join(lines) + "\n"


# What marks a file edgevit wrote, per output kind, so that re-running a command replaces its own output and
# never a user's file of the same name: the Markdown report ends with REPORT_MARK, the plot's PNG carries
# PLOT_SOFTWARE in its "Software" text chunk, a results CSV starts with CSV_FIELDS, a results JSON has "results"
# (bench), "profile" (profile) or "cases" (bench-scan).
REPORT_MARK = "<!-- written by edgevit report -->"
PLOT_SOFTWARE = "edgevit report"


def written_by_edgevit(path: Path, kind: str) -> bool:
    """Whether the existing file ``path`` is edgevit's own output of ``kind`` (json, csv, markdown, png)."""
    try:
        if kind == "png":
            return PLOT_SOFTWARE.encode() in path.read_bytes()[:4096]
        text = path.read_text(errors="replace")
    except OSError:
        return False
    if kind == "csv":
        return text.startswith(",".join(CSV_FIELDS[:2]) + ",")
    if kind == "markdown":
        return text.rstrip().endswith(REPORT_MARK)
    try:
        data = json.loads(text)
    except ValueError:
        return False
    return isinstance(data, dict) and any(key in data for key in ("results", "profile", "cases"))


def markdown_runs(runs: Sequence[tuple[str, dict]], compare_paper: bool = False) -> str:
    """:func:`markdown` of one run, or of several under a heading each (their path). Rows of different runs
    never share a table: each run has its own machine state, threads and timing protocol."""
    if len(runs) == 1:
        return markdown(runs[0][1], compare_paper)
    return "\n".join(f"## {name}\n\n{markdown(data, compare_paper)}" for name, data in runs)


def merged_rows(runs: Sequence[dict]) -> dict:
    """Several runs' rows as one result set for :func:`figure`. A model, input size and runtime measured in
    more than one run is drawn from the last run that has it (runs in the order given: the timestamped names
    of ``edgevit-bench/bench-*.json`` put the newest last), so no bar is drawn twice in one place."""
    rows: dict[tuple, dict] = {}
    for data in runs:
        for r in data["results"]:
            rows[(r["model"], tuple(r["input_size"]), r["runtime"])] = r
    return {**runs[-1], "results": list(rows.values())}


def to_csv(data: dict) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for r in data["results"]:
        writer.writerow({**r, "input_size": "x".join(map(str, r["input_size"]))})
    return buf.getvalue()


# One marker per runtime in the scatter panels (no lines: different models are not a series).
_MARKERS = "osD^vP*Xh<>"


def plot(data: dict, out: str | Path) -> Path:
    """Render :func:`figure` to a PNG (written under a temporary name, renamed when complete)."""
    fig = figure(data)
    import matplotlib.pyplot as plt

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=120, metadata={"Software": PLOT_SOFTWARE})
    plt.close(fig)
    tmp.replace(out)
    return out


def figure(data: dict) -> "matplotlib.figure.Figure":
    """Three panels: images/s per model and runtime (bars, the paper's figure as a black marker on the bar of
    the runtime it corresponds to), and images/s against params and against GMACs (labelled points)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ArtifactError("plotting needs matplotlib: pip install matplotlib") from exc
    rows = [r for r in data["results"] if not r.get("error") and r.get("images_per_s")]
    if not rows:
        raise ArtifactError("no successful benchmark rows to plot")
    label = lambda r: r["model"] + ("" if r["input_size"] == [224, 224] else f"@{r['input_size'][0]}")  # noqa: E731
    models = list(dict.fromkeys(label(r) for r in rows))
    runtimes_ = list(dict.fromkeys(r["runtime"] for r in rows))
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(max(13, 1.4 * len(models) + 9), 4.8))
    width = 0.8 / len(runtimes_)
    colors = {rt: f"C{j % 10}" for j, rt in enumerate(runtimes_)}
    paper_drawn = False
    for j, rt in enumerate(runtimes_):
        for r in (r for r in rows if r["runtime"] == rt):
            x = models.index(label(r)) + j * width
            ax1.bar(x, r["images_per_s"], width, color=colors[rt], label=rt)
            fig_ = paper_figure(r) if r.get("scenario", "throughput") == "throughput" else None
            if fig_ is not None and fig_.metric == "throughput":
                ax1.plot([x], [fig_.value], marker="_", markersize=14, markeredgewidth=2.5, color="black",
                         label="paper figure (its hardware)" if not paper_drawn else None)
                paper_drawn = True
    handles, labels = ax1.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax1.legend(unique.values(), unique.keys(), fontsize=7, loc="upper left")
    ax1.set_ylim(0, ax1.get_ylim()[1] * 1.3)  # headroom for the legend above the bars
    ax1.set_xticks([i + 0.4 - width / 2 for i in range(len(models))], models, rotation=30, ha="right")
    ax1.set_ylabel("images/s")
    ax1.set_title("Throughput per runtime")
    for ax, key, xlabel in ((ax2, "params_m", "parameters (M)"), (ax3, "gmacs_per_image", "GMACs per image (all ops)")):
        for j, rt in enumerate(runtimes_):
            pts = [r for r in rows if r["runtime"] == rt and r.get(key)]
            ax.scatter([r[key] for r in pts], [r["images_per_s"] for r in pts], color=colors[rt],
                       marker=_MARKERS[j % len(_MARKERS)], label=rt, zorder=3)
            for r in pts:
                ax.annotate(label(r), (r[key], r["images_per_s"]), textcoords="offset points", xytext=(4, 3),
                            fontsize=7)
        ax.margins(x=0.25, y=0.15)  # room for the point labels
        ax.set_xlabel(xlabel)
        ax.set_ylabel("images/s")
        ax.set_title(f"Throughput vs {xlabel.split(' (')[0]}")
        ax.legend(fontsize=7)
    for ax in (ax1, ax2, ax3):
        ax.grid(alpha=0.3)
    env = data["environment"]
    fig.suptitle(f"ours: {env.get('cpu_model')} · {env.get('threads')} threads", fontsize=9)
    fig.tight_layout()
    return fig
