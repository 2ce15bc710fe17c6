"""ONNX Runtime's mobile format (``.ort``) from a verified ONNX file.

An ``.ort`` file is the ONNX graph after ONNX Runtime's graph optimisations, serialised as a flatbuffer
that the reduced-size ONNX Runtime Mobile builds load without protobuf. Beside it goes
``required_operators.config``, the list of operators (per domain and opset) that is the input of ORT's
reduced operator build (``build.sh --include_ops_by_config``), so an app links only the kernels the
model uses. The artifact is a folder: ``model.ort``, ``required_operators.config``, ``manifest.json``.

The conversion is ONNX Runtime's own (``onnxruntime.tools.convert_onnx_models_to_ort``, in the
onnxruntime wheel). ``target_platform`` picks the optimisations baked in: ``arm`` (phones; the default)
or ``amd64``; either way the x86-only NCHWc layout is left out, which is why an ``.ort`` runs somewhat
slower than the ``.onnx`` on an x86 desktop and not on a phone.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..artifact import ArtifactMetadata
from ..errors import EdgevitError
from .onnx import OnnxOptions

ORT_FILE = "model.ort"
CONFIG_FILE = "required_operators.config"
MANIFEST_FILE = "manifest.json"
TARGET_PLATFORMS = ("arm", "amd64")


@dataclass(frozen=True)
class OrtFormatOptions:
    """What a user can choose about an ``.ort`` artifact; ``onnx`` are the options of the ONNX intermediate
    it is converted from."""

    target_platform: str = "arm"
    onnx: OnnxOptions = field(default_factory=OnnxOptions)

    def __post_init__(self) -> None:
        if self.target_platform not in TARGET_PLATFORMS:
            raise EdgevitError(f"unknown ORT target platform {self.target_platform!r}; choose one of "
                               f"{', '.join(TARGET_PLATFORMS)}")

    def metadata(self) -> dict[str, str]:
        return {"target_platform": self.target_platform}

    def check(self, batch: int | None) -> None:
        """Any batch the ONNX intermediate takes converts."""


def export_artifact(source: Path, directory: Path, options: OrtFormatOptions,
                    meta: ArtifactMetadata) -> ArtifactMetadata:
    """The ORT row's exporter: the verified ONNX intermediate ``source`` -> the folder ``directory``."""
    convert_to_ort(source, directory, options, meta)
    return meta


def record_parity(directory: Path, parity: dict[str, Any]) -> None:
    """Add the verification result to ``manifest.json`` (written before verification)."""
    path = Path(directory) / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    manifest["parity"] = parity
    path.write_text(json.dumps(manifest, indent=2))


def read_artifact_metadata(directory: Path) -> ArtifactMetadata | None:
    """Edgevit metadata of an ``.ort`` folder from its manifest (without ONNX Runtime)."""
    path = Path(directory) / MANIFEST_FILE
    if not path.exists():
        return None
    return ArtifactMetadata.from_props(json.loads(path.read_text()).get("metadata", {}))


def convert_to_ort(onnx_path: str | Path, out_dir: str | Path, options: OrtFormatOptions,
                   metadata: ArtifactMetadata) -> dict[str, Any]:
    """Write ``model.ort``, ``required_operators.config`` and ``manifest.json`` into ``out_dir`` (an
    existing, empty folder: the caller's temporary); returns the manifest."""
    import onnxruntime
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="edgevit-ort-") as tmp:
        source = Path(tmp) / "model.onnx"  # the converter names its outputs after the input file
        shutil.copyfile(onnx_path, source)
        converted = Path(tmp) / "out"
        logs = [logging.getLogger(n) for n in ("ort_format_model", "ort_format_model.utils")]
        levels = [log.level for log in logs]
        for log in logs:  # the converter's utils logger is set to INFO explicitly: quiet it too
            log.setLevel(logging.WARNING)
        chatter = io.StringIO()  # the converter prints progress lines; edgevit's CLI reports instead
        try:
            with contextlib.redirect_stdout(chatter):
                convert_onnx_models_to_ort(source, output_dir=converted,
                                           optimization_styles=[OptimizationStyle.Fixed],
                                           target_platform=options.target_platform)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise EdgevitError(f"ONNX Runtime could not convert {metadata.model} to the ORT format: {first}") from exc
        finally:
            for log, level in zip(logs, levels):
                log.setLevel(level)
        if not (converted / "model.ort").exists():
            raise EdgevitError(f"ONNX Runtime did not convert {metadata.model} to the ORT format: "
                               f"{chatter.getvalue().strip().splitlines()[-1:]}")
        shutil.move(converted / "model.ort", out_dir / ORT_FILE)
        config = (converted / "model.required_operators.config").read_text()
    # the converter's header names its temporary input; name the shipped file instead
    lines = [ln for ln in config.splitlines() if ln.strip() and not ln.startswith("#")]
    (out_dir / CONFIG_FILE).write_text(f"# Generated from model/s:\n# - {ORT_FILE}\n" + "\n".join(lines) + "\n")
    manifest = {"onnxruntime": onnxruntime.__version__, "target_platform": options.target_platform,
                "optimization_style": "fixed", "required_operators": lines, "metadata": metadata.to_props()}
    (out_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    return manifest


def ort_file(path: str | Path) -> Path:
    """The ``.ort`` file of an artifact folder (or the file itself)."""
    path = Path(path)
    return path / ORT_FILE if path.is_dir() else path
