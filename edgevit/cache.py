"""Where edgevit keeps files it builds for itself between runs (benchmark artifacts, TensorRT timing caches), and
what tells a cached file from a stale one."""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def cache_dir() -> Path:
    """``EDGEVIT_CACHE`` or ``~/.cache/edgevit``; a lower layer than the pipeline so exporters can use it."""
    return Path(os.environ.get("EDGEVIT_CACHE", Path.home() / ".cache" / "edgevit"))


@functools.lru_cache(maxsize=8)
def source_digest(root: Path = PACKAGE_DIR) -> str:
    """A short SHA-256 of the Python source under ``root`` (edgevit's own package by default).

    Why: a cached benchmark artifact is reused while its metadata matches the request, and the version alone does
    not say which code exported it: a checkout edited at the same version (a model's graph changed, an exporter
    fixed) would keep benchmarking the old graph. Every ``.py`` file counts, by path and content (bytecode, being
    ``.pyc``, does not). Read once per process (~70 files).
    """
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]
