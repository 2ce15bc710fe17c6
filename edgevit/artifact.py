"""The metadata every edgevit artifact carries, shared by exporters (which write it) and runtimes
(which read it), so an artifact can be verified and benchmarked without being told what it is."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

PREFIX = "edgevit."


@dataclass(frozen=True)
class ArtifactMetadata:
    model: str
    input_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    batch: int | None  # None: dynamic batch axis
    input_names: tuple[str, ...] = ("input",)
    output_names: tuple[str, ...] = ("logits",)
    features_only: bool = False
    weights: str = "reference(seed=0)"
    seed: int = 0
    edgevit_version: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def to_props(self) -> dict[str, str]:
        """Flat string properties (ONNX metadata_props, OpenVINO rt_info, JSON manifests)."""
        out = {}
        for k, v in asdict(self).items():
            if k == "extra":
                out.update({PREFIX + ek: str(ev) for ek, ev in v.items()})
            else:
                out[PREFIX + k] = json.dumps(v)
        return out

    @classmethod
    def from_props(cls, props: Mapping[str, str]) -> ArtifactMetadata | None:
        """Parse properties written by :meth:`to_props`; ``None`` when the artifact is not edgevit's."""
        if PREFIX + "model" not in props:
            return None
        known = {f.name for f in fields(cls)} - {"extra"}
        kwargs: dict[str, object] = {}
        extra: dict[str, str] = {}
        for key, raw in props.items():
            if not key.startswith(PREFIX):
                continue
            name = key[len(PREFIX):]
            if name in known:
                kwargs[name] = json.loads(raw)
            else:
                extra[name] = raw
        for name in ("input_size", "mean", "std", "input_names", "output_names"):
            if name in kwargs:
                kwargs[name] = tuple(kwargs[name])  # type: ignore[arg-type]
        return cls(**kwargs, extra=extra)  # type: ignore[arg-type]


@contextmanager
def atomic_output(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; move it into place only if the block succeeds.

    A crash, a failed verification or Ctrl-C therefore never leaves a half-written artifact under the
    final name (nor a stale temporary file).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=f".tmp{final.suffix}", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextmanager
def atomic_output_dir(final: str | Path) -> Iterator[Path]:
    """Like :func:`atomic_output` for an artifact made of several files (an OpenVINO IR folder).

    The folder is built beside ``final`` and renamed into place; a previous artifact of the same name is
    moved aside first and deleted only after the rename, so the name never points at a partial folder.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp's 0700 is for the temporary; the artifact is a normal folder
    old = None
    try:
        yield tmp
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
            os.replace(final, old / final.name)
        os.replace(tmp, final)
    finally:
        for leftover in (tmp, old):
            if leftover is not None and leftover.exists():
                shutil.rmtree(leftover)
