"""Reproduce a paper's speed table on this machine: which cases to run, and its layout beside ours.

The paper's CPU columns map to edgevit runtimes (PyTorch CPU -> ``torch``, "ONNX" -> ``onnxruntime``); the
run adds what a performance engineer would want beside them (OpenVINO f32 with ``benchmark_app``'s figure,
``torch-compile``) without changing the paper's columns.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import EdgevitError
from ..models.paper import PaperFigure, all_figures

# Runtimes the paper's CPU columns are compared with, then the extra columns a reproduction adds.
EXTRA_CPU_RUNTIMES = ("openvino:f32", "torch-compile")
CPU_RUNTIME_CLASSES = ("torch", "onnxruntime")
# How a paper column is titled in our rendering, by edgevit runtime class.
COLUMN_TITLES = {"torch": "CPU (PyTorch)", "onnxruntime": "ONNX (ORT)", "torch-cuda": "GPU (PyTorch)"}


@dataclass(frozen=True)
class PaperProtocol:
    family: str
    table: str
    models: list[str]
    runtimes: list[str]  # edgevit runtime names to run
    resolution: int
    batch: int | None
    metric: str
    note: str


def families() -> list[str]:
    return sorted({f.family.lower() for f in all_figures()})


def protocol(family: str) -> PaperProtocol:
    """The CPU speed table of ``family``'s paper as a benchmark plan (first table with a CPU column)."""
    figs = [f for f in all_figures() if f.family.lower() == family.lower()]
    if not figs:
        raise EdgevitError(f"no paper speed table for {family!r}; choose one of {', '.join(families())}")
    cpu = [f for f in figs if f.runtime in CPU_RUNTIME_CLASSES]
    if not cpu:
        raise EdgevitError(f"the {figs[0].family} paper reports no CPU speed (only {figs[0].hardware}); "
                           "its table needs --device cuda")
    table = cpu[0].table
    in_table = [f for f in cpu if f.table == table]
    runtimes = list(dict.fromkeys(f.runtime for f in in_table)) + list(EXTRA_CPU_RUNTIMES)
    return PaperProtocol(cpu[0].family, table, list(dict.fromkeys(f.model for f in in_table)), runtimes,
                         in_table[0].resolution, in_table[0].batch, in_table[0].metric, in_table[0].note)


def _table_figures(family: str, table: str) -> list[PaperFigure]:
    return [f for f in all_figures() if f.family == family and f.table == table]


def paper_layout(data: dict) -> str | None:
    """Markdown in the paper's layout (one row per model, the paper's columns with ours beside each), when the
    results come from ``bench --paper``; None otherwise."""
    meta = data.get("environment", {}).get("paper")
    if not meta:
        return None
    figs = _table_figures(meta["family"], meta["table"])
    runtimes_ = list(dict.fromkeys(r["runtime"] for r in data["results"]))
    paper_cols = list(dict.fromkeys(f.runtime for f in figs if f.runtime in CPU_RUNTIME_CLASSES))
    value = "images/s" if meta["metric"] == "throughput" else "ms"
    head = ["model", "params M"]
    for col in paper_cols:
        head += [f"paper {COLUMN_TITLES.get(col, col)}", f"ours {col}"]
    head += [f"ours {rt}" for rt in runtimes_ if rt not in paper_cols]
    lines = [f"{meta['family']} {meta['table']} ({value}; {meta['resolution']}x{meta['resolution']})", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by = {(r["model"], r["runtime"]): r for r in data["results"]}

    def ours(model: str, rt: str) -> str:
        r = by.get((model, rt))
        if r is None:
            return "—"
        if r.get("error"):
            return "error"
        v = r["images_per_s"] if meta["metric"] == "throughput" else r["latency_ms_p50"]
        return f"{v:.2f} ±{100 * r['spread']:.0f}%"

    for model in meta["models"]:
        params = next((r["params_m"] for r in data["results"] if r["model"] == model and r.get("params_m")), None)
        cells = [model, "—" if params is None else f"{params:.2f}"]
        for col in paper_cols:
            fig = next((f for f in figs if f.model == model and f.runtime == col), None)
            cells += ["—" if fig is None else f"{fig.value:g}", ours(model, col)]
        cells += [ours(model, rt) for rt in runtimes_ if rt not in paper_cols]
        lines.append("| " + " | ".join(cells) + " |")
    env = data["environment"]
    hw = sorted({f"{COLUMN_TITLES.get(f.runtime, f.runtime)}: {f.hardware}" for f in figs
                 if f.runtime in paper_cols})
    lines += ["", f"Paper hardware: {'; '.join(hw)}. Paper settings: {meta['note']}.",
              f"Our hardware: {env.get('cpu_model')} ({env.get('logical_cores')} logical cores), {env.get('threads')} "
              f"threads, batch {meta.get('batch')}, fp32; "
              + ", ".join(f"{k} {v}" for k, v in env.get("libraries", {}).items() if k in ("torch", "onnxruntime",
                                                                                          "openvino")) + "."]
    return "\n".join(lines) + "\n"
