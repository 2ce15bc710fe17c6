"""Reference figures from the runtimes' own tools on the same file, reported beside edgevit's.

Why: a user who doubts an OpenVINO number runs ``benchmark_app`` on the IR; if edgevit's runner (one
synchronous request, inputs checked once) were slower than the runtime can be, the gap shows here. Each
reference runs in a separate process with the same threads/streams/precision, so it shares no code or
state with edgevit's timing loop.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .suite import BenchCase
    from .timing import TimingPolicy

# benchmark_app's inference precision names for edgevit's requested OpenVINO precisions (None: device default)
_BA_PRECISION = {"f32": "f32", "fp32": "f32", "bf16": "bf16", "f16": "f16", "fp16": "f16"}
TIMEOUT_S = 600


def benchmark_app_path() -> str | None:
    """``benchmark_app`` next to this Python (the openvino wheel installs it), else on PATH."""
    beside = Path(sys.executable).with_name("benchmark_app")
    return str(beside) if beside.exists() else shutil.which("benchmark_app")


def benchmark_app_command(model: Path, threads: int, streams: int | None, precision: str | None,
                          seconds: float) -> list[str]:
    """Same device, threads, streams and inference precision as edgevit's OpenVINO runner, one synchronous
    request (as edgevit's timing loop), no performance hint (the hint would override threads/streams)."""
    exe = benchmark_app_path() or "benchmark_app"
    target = model / "model.xml" if model.is_dir() else model
    cmd = [exe, "-m", str(target), "-d", "CPU", "-nthreads", str(threads), "-nstreams", str(streams or 1),
           "-hint", "none", "-api", "sync", "-t", str(max(1, round(seconds)))]
    if precision in _BA_PRECISION:
        cmd += ["-infer_precision", _BA_PRECISION[precision]]
    return cmd


def parse_benchmark_app(text: str) -> dict[str, float]:
    """Throughput (images/s: benchmark_app counts batch x iterations) and median latency from its log."""
    out: dict[str, float] = {}
    m = re.search(r"Throughput:\s*([\d.]+)\s*FPS", text)
    if m:
        out["images_per_s"] = float(m.group(1))
    m = re.search(r"Median:\s*([\d.]+)\s*ms", text)
    if m:
        out["latency_ms_p50"] = float(m.group(1))
    return out


# A plain ONNX Runtime session with the options edgevit's ORT runner sets (ORT_ENABLE_ALL, intra-op threads,
# one inter-op thread, subnormals flushed on the pool threads and the calling thread: runtimes/denormals.py),
# timed with its own loop: the figure any ORT user would get from a dozen lines.
_ORT_SCRIPT = r"""
import json, sys, time
import numpy as np, onnxruntime as ort, torch
path, threads, batch, h, w, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
flush = sys.argv[7] == "1"
torch.set_flush_denormal(flush)
o = ort.SessionOptions()
o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
o.intra_op_num_threads, o.inter_op_num_threads, o.log_severity_level = threads, 1, 3
o.add_session_config_entry("session.set_denormal_as_zero", sys.argv[7])
s = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
feeds = {s.get_inputs()[0].name: np.random.default_rng(0).standard_normal((batch, 3, h, w), dtype=np.float32)}
for _ in range(2):
    s.run(None, feeds)
lat, t0 = [], time.perf_counter()
while len(lat) < 3 or time.perf_counter() - t0 < seconds:
    t = time.perf_counter(); s.run(None, feeds); lat.append(time.perf_counter() - t)
print(json.dumps({"images_per_s": batch * len(lat) / sum(lat), "latency_ms_p50": 1000 * float(np.median(lat))}))
"""


def ort_command(model: Path, threads: int, batch: int, size: tuple[int, int], seconds: float,
                flush_denormals: bool = True) -> list[str]:
    return [sys.executable, "-c", _ORT_SCRIPT, str(model), str(threads), str(batch), str(size[0]), str(size[1]),
            str(seconds), "1" if flush_denormals else "0"]


def _run(cmd: list[str], tool: str, parse: Callable[[str], dict[str, float]]) -> dict[str, object]:
    shown = " ".join(c if c != _ORT_SCRIPT else "<plain ORT session script>" for c in cmd)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"tool": tool, "command": shown, "error": str(exc).splitlines()[0]}
    figures = parse(done.stdout) if done.returncode == 0 else {}
    if not figures:
        tail = (done.stderr or done.stdout).strip().splitlines()
        return {"tool": tool, "command": shown, "error": f"exit {done.returncode}: {tail[-1] if tail else ''}"}
    return {"tool": tool, "command": shown, **figures}


def reference_for(case: "BenchCase", artifact: Path | None, policy: "TimingPolicy") -> dict[str, object] | None:
    """The runtime's own figure for this case, or None where there is no independent tool (eager torch)."""
    if artifact is None:
        return None
    seconds = max(policy.min_seconds * policy.repeats, 2.0)
    if case.runtime.backend == "openvino":
        if benchmark_app_path() is None:
            return {"tool": "benchmark_app", "error": "benchmark_app not found (it ships with the openvino wheel)"}
        cmd = benchmark_app_command(artifact, case.threads, case.streams, case.runtime.precision, seconds)
        return _run(cmd, "benchmark_app", parse_benchmark_app)
    if case.runtime.backend == "onnxruntime":
        cmd = ort_command(artifact, case.threads, case.batch, case.input_size, seconds,
                          flush_denormals=not case.runtime.keep_denormals)
        return _run(cmd, "onnxruntime session (same options)", lambda s: json.loads(s.strip().splitlines()[-1]))
    return None
