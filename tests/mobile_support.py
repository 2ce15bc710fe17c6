"""Shared by the ExecuTorch/ORT format tests and the C++ ExecuTorch test: one small verified export per
session (lowering is the slow part; several test files read the same program)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgevit import pipeline
from edgevit.formats import format_options, get_format

MODEL = "s2aformer-mini"
SIZE = (64, 64)
_EXPORTS: dict[tuple, pipeline.ExportReport] = {}


def exported(factory: pytest.TempPathFactory, to: str, name: str = MODEL, **options: object) -> pipeline.ExportReport:
    """``pipeline.export(name, to, ...)`` at 64x64, verified, once per session and options."""
    key = (to, name, tuple(sorted(options.items())))
    if key not in _EXPORTS:
        out = factory.mktemp(to)
        fopts = format_options(to, **options)
        _EXPORTS[key] = pipeline.export(name, to, out / get_format(to).default_name(name, fopts),
                                        format_options=fopts, input_size=SIZE)
    return _EXPORTS[key]


def exported_path(factory: pytest.TempPathFactory, to: str, **options: object) -> Path:
    return exported(factory, to, **options).path
