"""The papers' reported speed figures, kept as data (one JSON file per family in this folder).

Each table records its source, hardware, resolution and batch size so a measured number can be put beside
the paper's with its context (``edgevit report --compare-paper``); model cards take their throughput from
here too, so every figure exists once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources


@dataclass(frozen=True)
class PaperFigure:
    model: str
    family: str
    table: str
    metric: str  # "throughput" (images/s), "latency" (ms), "memory" (MB)
    unit: str
    runtime: str  # edgevit runtime class the column corresponds to: torch, torch-cuda, onnxruntime, ...
    hardware: str
    resolution: int
    batch: int | None
    precision: str | None
    value: float
    note: str = ""

    @property
    def label(self) -> str:
        return f"{self.runtime}@{self.hardware}" + (f" {self.resolution}px" if self.resolution != 224 else "")


@cache
def all_figures() -> tuple[PaperFigure, ...]:
    out: list[PaperFigure] = []
    for entry in sorted(resources.files(__package__).iterdir(), key=lambda p: p.name):
        if not entry.name.endswith(".json"):
            continue
        data = json.loads(entry.read_text())
        for table in data["tables"]:
            for model, values in table["rows"].items():
                for column, value in values.items():
                    if value is None:
                        continue
                    col = table["columns"][column]
                    out.append(PaperFigure(
                        model=model, family=data["family"], table=table["table"], metric=table["metric"],
                        unit=table["unit"], runtime=col["runtime"], hardware=col["hardware"],
                        resolution=int(col.get("resolution", table["resolution"])),
                        batch=col.get("batch", table.get("batch")), precision=table.get("precision"),
                        value=float(value), note=table.get("note", ""),
                    ))
    return tuple(out)


def figures_for(model: str, metric: str | None = None) -> list[PaperFigure]:
    return [f for f in all_figures() if f.model == model and (metric is None or f.metric == metric)]


def throughput_for(model: str) -> dict[str, float]:
    """``{"runtime@hardware[ res]": images/s}`` for a model card."""
    return {f.label: f.value for f in figures_for(model, "throughput")}
