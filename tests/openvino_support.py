"""Shared by the OpenVINO exporter, runtime and C++ tests: which models to cover, and IR exports made
once per test session (an export is the slow part; several test files read the same IR)."""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from pathlib import Path

import pytest

import edgevit
from edgevit import pipeline
from edgevit.formats import format_options
from edgevit.models import get_model_card

_EXPORTS: dict[tuple, Path] = {}


def smallest_per_family() -> list[str]:
    """The smallest registered variant (by the paper's parameter count) of every family, so families
    registered later are covered without editing the tests."""
    families: dict[str, list[str]] = defaultdict(list)
    for name in edgevit.list_models():
        families[get_model_card(name).family].append(name)
    return sorted(min(names, key=lambda n: (get_model_card(n).reported.params_m or math.inf, n))
                  for names in families.values())


def small_size(name: str, target: int = 64) -> tuple[int, int]:
    """The smallest square input near ``target`` the model accepts (structural tests stay fast)."""
    card = get_model_card(name)
    side = max(card.min_input_size, -(-target // card.input_multiple) * card.input_multiple)
    return side, side


def exported_ir(factory: pytest.TempPathFactory, name: str, **options: object) -> Path:
    """``pipeline.export(name, "openvino", ...)`` at the model's small size, once per session and options."""
    options.setdefault("input_size", small_size(name))
    key = (name, tuple(sorted(options.items())))
    if key not in _EXPORTS:
        out = factory.mktemp("openvino") / "ir"
        common = {k: v for k, v in options.items() if k in {f.name for f in dataclasses.fields(pipeline.ExportOptions)}}
        own = format_options("openvino", **{k: v for k, v in options.items() if k not in common})
        pipeline.export(name, "openvino", out, format_options=own, **common)
        _EXPORTS[key] = out
    return _EXPORTS[key]
