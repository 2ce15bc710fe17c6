"""Where edgevit keeps files it builds for itself between runs (benchmark artifacts, TensorRT timing caches)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``EDGEVIT_CACHE`` or ``~/.cache/edgevit``; a lower layer than the pipeline so exporters can use it."""
    return Path(os.environ.get("EDGEVIT_CACHE", Path.home() / ".cache" / "edgevit"))
