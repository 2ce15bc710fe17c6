"""ORT-format backend: an ``.ort`` file (or the folder ``edgevit export --to ort`` writes) run by ONNX
Runtime. The session is ONNX Runtime's as for ``.onnx``; a separate backend name keeps benchmark
columns and reports honest about which file ran (the ``.ort`` lacks the x86 NCHWc layout the ``.onnx``
gets at load, so the two differ in speed on x86)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ArtifactError
from .onnxruntime_backend import OnnxRuntimeRunner


class OrtFormatRunner(OnnxRuntimeRunner):
    def __init__(self, path: str | Path, *, threads: int | None = None,
                 providers: list[str] | None = None) -> None:
        from ..exporters.ort_format import MANIFEST_FILE, ort_file

        path = Path(path)
        model = ort_file(path)
        if not model.exists():
            raise ArtifactError(f"{str(path)!r} holds no {model.name}; export one with `edgevit export MODEL --to ort`")
        super().__init__(model, threads=threads, providers=providers)
        self.info.backend = "ort"
        self.info.details["format"] = "ort"
        manifest = model.parent / MANIFEST_FILE
        if manifest.exists():
            self.info.details["target_platform"] = json.loads(manifest.read_text()).get("target_platform", "")
