"""Helpers shared by the fault-injection tests: tiny artifacts built with onnx.helper (no edgevit code),
running the CLI in a child process, and the snapshot of a folder used for "nothing written"."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parents[1]
_PR_CAPBSET_DROP, _CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 24, 1, 2


def tiny_onnx(path: Path, *, dtype: int = TensorProto.FLOAT, metadata: dict[str, str] | None = None,
              size: int = 8) -> Path:
    """``y = x * w`` on a 1x3xSxS input of ``dtype``; ``metadata`` become metadata_props."""
    w = numpy_helper.from_array(np.full((1, 3, size, size), 2, dtype=helper.tensor_dtype_to_np_dtype(dtype)), "w")
    node = helper.make_node("Mul", ["input", "w"], ["logits"])
    graph = helper.make_graph([node], "tiny", [helper.make_tensor_value_info("input", dtype, [1, 3, size, size])],
                              [helper.make_tensor_value_info("logits", dtype, [1, 3, size, size])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def edgevit_props(**overrides: str) -> dict[str, str]:
    """Metadata as an edgevit export writes it (JSON values), written out by hand."""
    props = {"edgevit.model": '"s2aformer-mini"', "edgevit.input_size": "[8, 8]", "edgevit.mean": "[0.5, 0.5, 0.5]",
             "edgevit.std": "[0.5, 0.5, 0.5]", "edgevit.batch": "1", "edgevit.output_names": '["logits"]'}
    props.update(overrides)
    return props


def tiny_ir(folder: Path, manifest: str | None = None) -> Path:
    """An OpenVINO IR folder (model.xml/.bin) from :func:`tiny_onnx`, with ``manifest.json`` text if given."""
    import openvino as ov

    folder.mkdir(parents=True)
    src = tiny_onnx(folder.parent / f"{folder.name}-src.onnx")
    ov.save_model(ov.convert_model(str(src)), str(folder / "model.xml"))
    src.unlink()
    if manifest is not None:
        (folder / "manifest.json").write_text(manifest)
    return folder


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``folder`` with (size, mtime_ns): equal snapshots mean nothing was written."""
    return {str(p.relative_to(folder)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in folder.rglob("*")}


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None, preexec=None,
        timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m edgevit.cli ARGS`` in a child process (its own exit code, stderr and signals)."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "400", **(env or {})}
    return subprocess.run(check=False, args=[sys.executable, "-m", "edgevit.cli", *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout, preexec_fn=preexec)


def permission_checks_apply() -> None:
    """preexec_fn making file permissions bind in the child: root ignores chmod (CAP_DAC_OVERRIDE), so when
    root, drop that capability from the bounding set (the exec'd child then lacks it). Dropping to another
    uid would not do: the interpreter may live under root's 0700 home."""
    if os.geteuid() != 0:
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) refused")


def can_enforce_permissions() -> bool:
    """False where root cannot drop CAP_DAC_OVERRIDE (no CAP_SETPCAP): chmod'ed folders cannot be tested."""
    res = subprocess.run(check=False, args=[sys.executable, "-c", "pass"], preexec_fn=permission_checks_apply, capture_output=True)
    return res.returncode == 0


def one_error_line(stderr: str) -> str:
    """The error output must be exactly one ``error:`` line, without a traceback."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert "Traceback" not in stderr, stderr
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1, stderr
    return errors[0]
