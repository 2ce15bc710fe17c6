"""Shared by the C++ app tests: toolchain checks, one CMake configure + build, and running an app whose
stdout is ``key=value`` lines."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def missing_toolchain() -> str | None:
    if shutil.which("cmake") is None:
        return "cmake is not installed"
    if not any(shutil.which(c) for c in filter(None, (os.environ.get("CXX"), "c++", "g++", "clang++"))):
        return "no C++ compiler (c++, g++, clang++ or $CXX) is installed"
    return None


def cmake_build(build: Path, *definitions: str) -> Path:
    """Configure ``cpp/`` into ``build`` with ``-D`` ``definitions`` and build it; fails the test with the
    tail of the output when either step fails. Returns ``build``."""
    for cmd in (["cmake", "-S", str(ROOT / "cpp"), "-B", str(build), *definitions, "-DCMAKE_BUILD_TYPE=Release"],
                ["cmake", "--build", str(build), "-j", "2"]):
        res = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=900)
        if res.returncode:
            pytest.fail(f"{' '.join(cmd)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return build


def run_app(app: Path, *args: object, ok: bool = True) -> dict[str, str]:
    """Run ``app``; ``ok``: exit 0 and the key=value lines as a dict, else exit 2 with "error: ..."."""
    res = subprocess.run([str(app), *map(str, args)], check=False, capture_output=True, text=True, timeout=300)
    if ok:
        assert res.returncode == 0, res.stderr
        return dict(line.split("=", 1) for line in res.stdout.splitlines() if "=" in line)
    assert res.returncode == 2 and "error: " in res.stderr
    return {"error": res.stderr}
