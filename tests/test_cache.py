"""The benchmark cache: a cached artifact is reused only when the code that exported it is this code."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgevit import pipeline
from edgevit.cache import source_digest

MODEL = "s2aformer-mini"
SIZE = (64, 64)


def test_source_digest_follows_every_source_file_and_ignores_bytecode(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "models" / "b.py").write_text("y = 2\n")
    first = source_digest(tmp_path)
    source_digest.cache_clear()
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "a.cpython-312.pyc").write_bytes(b"\0bytecode")
    assert source_digest(tmp_path) == first
    source_digest.cache_clear()
    (tmp_path / "models" / "b.py").write_text("y = 3\n")  # an edited model module, same version
    assert source_digest(tmp_path) != first
    source_digest.cache_clear()


def test_a_cached_artifact_from_other_source_is_exported_again(monkeypatch: pytest.MonkeyPatch) -> None:
    path = pipeline.cached_artifact(MODEL, "onnx", SIZE, 1)
    assert pipeline.get_format("onnx").read_metadata(path).source_digest == source_digest()
    exports: list[Path] = []
    real_export = pipeline.export

    def counting_export(*args: object, **kwargs: object) -> object:
        exports.append(args[2])  # type: ignore[arg-type]
        return real_export(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pipeline, "export", counting_export)
    assert pipeline.cached_artifact(MODEL, "onnx", SIZE, 1) == path and exports == []  # same source: reused
    monkeypatch.setattr(pipeline, "source_digest", lambda: "0123456789abcdef")  # as if the checkout was edited
    assert pipeline.cached_artifact(MODEL, "onnx", SIZE, 1) == path and exports == [path]
    assert pipeline.get_format("onnx").read_metadata(path).source_digest == "0123456789abcdef"
