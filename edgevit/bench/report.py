"""Turn benchmark JSON into what people read: Markdown (with the papers' figures beside ours), CSV, plots."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import ArtifactError
from ..models.paper import PaperFigure, figures_for

# Which paper column a measured runtime is compared with (the paper's "CPU" column is PyTorch on CPU, ...).
_PAPER_RUNTIME = {"torch": "torch", "torch-cuda:fp32": "torch-cuda", "torch-cuda:fp16": "torch-cuda",
                  "onnxruntime": "onnxruntime", "tensorrt:fp16": "torch-cuda", "tensorrt:fp32": "torch-cuda"}

CSV_FIELDS = ("model", "runtime", "precision", "scenario", "input_size", "batch", "threads", "images_per_s",
              "spread", "latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "params_m", "gmacs_per_image",
              "achieved_gmacs_per_s", "peak_fraction", "peak_rss_mb", "cuda_peak_mb", "error")


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
    lines = [
        f"Measured on {env.get('cpu_model')} ({env.get('logical_cores')} logical cores, ISA "
        f"{' '.join(env.get('isa_flags', []))}), {env.get('threads')} threads"
        + (f", GPU {env['gpu']}" if env.get("gpu") else "") + f"; {libs}.",
        "",
    ]
    head = ["model", "runtime", "precision", "input", "batch", "images/s", "spread", "p50 ms", "p99 ms",
            "GMAC/s", "% peak", "peak RSS MB"]
    if compare_paper:
        head += ["paper", "ours / paper", "paper hardware"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes: dict[str, str] = {}
    for r in data["results"]:
        size = "x".join(map(str, r["input_size"]))
        if r.get("error"):
            cells = [r["model"], r["runtime"], r.get("precision") or "—", size, str(r["batch"]),
                     f"error: {r['error']}"] + [""] * (len(head) - 6)
            lines.append("| " + " | ".join(cells) + " |")
            continue
        cells = [r["model"], r["runtime"], r.get("precision") or "—", size, str(r["batch"]),
                 _fmt(r.get("images_per_s"), ".1f"), _fmt(100 * r["spread"] if r.get("spread") is not None else None,
                                                          ".1f") + "%",
                 _fmt(r.get("latency_ms_p50"), ".2f"), _fmt(r.get("latency_ms_p99"), ".2f"),
                 _fmt(r.get("achieved_gmacs_per_s"), ".1f"),
                 _fmt(100 * r["peak_fraction"] if r.get("peak_fraction") else None, ".1f"),
                 _fmt(r.get("peak_rss_mb"), ".0f")]
        if compare_paper:
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
    assumptions = sorted({r["peak_assumption"] for r in data["results"] if r.get("peak_assumption")})
    if assumptions:
        lines += ["", "Peak assumed: " + "; ".join(assumptions) + "."]
    for where, note in notes.items():
        lines.append(f"{where}: {note}.")
    if compare_paper:
        lines.append("Ratios compare different machines: read them as a profile, not as a reproduction.")
    return "\n".join(lines) + "\n"


def to_csv(data: dict) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for r in data["results"]:
        writer.writerow({**r, "input_size": "x".join(map(str, r["input_size"]))})
    return buf.getvalue()


@dataclass(frozen=True)
class _Point:
    model: str
    runtime: str
    images_per_s: float
    params_m: float
    resolution: str


def plot(data: dict, out: str | Path) -> Path:
    """Two panels: throughput per model and runtime (bars), and throughput vs parameters (one line per runtime)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ArtifactError("plotting needs matplotlib: pip install matplotlib") from exc
    pts = [_Point(r["model"] + ("" if r["input_size"] == [224, 224] else f"@{r['input_size'][0]}"), r["runtime"],
                  r["images_per_s"], r["params_m"] or 0.0, "x".join(map(str, r["input_size"])))
           for r in data["results"] if not r.get("error") and r.get("images_per_s")]
    if not pts:
        raise ArtifactError("no successful benchmark rows to plot")
    models = list(dict.fromkeys(p.model for p in pts))
    runtimes_ = list(dict.fromkeys(p.runtime for p in pts))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(models) + 6), 4.5))
    width = 0.8 / len(runtimes_)
    for j, rt in enumerate(runtimes_):
        xs, ys = _series(pts, models, rt)
        ax1.bar([x + j * width for x in xs], ys, width, label=rt)
        for res in dict.fromkeys(p.resolution for p in pts):  # one curve per runtime and resolution
            by_params = sorted((p.params_m, p.images_per_s) for p in pts if p.runtime == rt and p.resolution == res)
            if by_params:
                ax2.plot([a for a, _ in by_params], [b for _, b in by_params], "o-", label=f"{rt} {res}")
    ax1.set_xticks([i + 0.4 - width / 2 for i in range(len(models))], models, rotation=30, ha="right")
    ax1.set_ylabel("images/s")
    ax1.set_title("Throughput per model and runtime")
    ax2.set_xlabel("parameters (M)")
    ax2.set_ylabel("images/s")
    ax2.set_title("Throughput vs parameters")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    env = data["environment"]
    fig.suptitle(f"{env.get('cpu_model')} · {env.get('threads')} threads", fontsize=9)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def _series(pts: Sequence[_Point], models: list[str], runtime: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for i, m in enumerate(models):
        for p in pts:
            if p.model == m and p.runtime == runtime:
                xs.append(i)
                ys.append(p.images_per_s)
    return xs, ys
