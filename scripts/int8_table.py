"""int8 vs fp32 per family: agreement on the fixed evaluation set and single-thread latency, ORT and OpenVINO.

Usage: python scripts/int8_table.py [--no-export] SIZE N_IMAGES OUT_DIR MODEL [MODEL ...]
An artifact already in OUT_DIR (from an earlier, interrupted run) is measured, not exported again;
``--no-export`` measures only those and skips a runtime whose artifacts are missing.
Prints one JSON ``ROW`` per model: for each runtime the fp32 and int8 median latency (ms, 1 thread, batch 1,
15 runs after 2 warm-ups), the speed-up, and the int8 agreement report (edgevit.quantization.accuracy) on the
first N_IMAGES evaluation images (with how many of them have a clear fp32 class: ``decisive``). Latencies
are relative: run it on a quiet machine.
"""
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from edgevit import pipeline, runtimes
from edgevit.formats import format_options
from edgevit.models import create_model, get_model_card
from edgevit.quantization.accuracy import measure_agreement


def latency_ms(runner, x, reps=15):
    call = runner.benchmark_callable(x)
    call(), call()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main(size: int, n: int, out: Path, names: list[str], export: bool = True) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        card, sz = get_model_card(name), (size, size)
        ref = runtimes.load(create_model(name), input_size=sz)
        x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
        row: dict = {"model": name, "size": size, "images": n}
        for to in ("onnx", "openvino"):
            ms = {}
            paths = {prec: out / (f"{name}-{size}-{to}-{prec}" + (".onnx" if to == "onnx" else ""))
                     for prec in ("fp32", "int8")}
            if not export and not all(p.exists() for p in paths.values()):
                continue
            for prec, path in paths.items():
                t = time.time()
                if not path.exists():
                    opts = format_options(to, precision=prec) if prec != "fp32" else None
                    pipeline.export(name, to, path, input_size=size, verify=False, format_options=opts)
                runner = runtimes.load(path, "onnxruntime" if to == "onnx" else "openvino", threads=1,
                                       **({"precision": "fp32"} if to == "openvino" else {}))
                ms[prec] = latency_ms(runner, x)
                if prec == "int8":
                    a = measure_agreement(ref, runner, sz, card.mean, card.std, count=n)
                    row[f"{to}-int8"] = {"top1_decisive": round(a.top1_decisive, 4), "decisive": a.decisive,
                                         "top1": round(a.top1, 4), "top5": round(a.top5, 4),
                                         "max_rel": round(a.max_rel, 4), "mean_rel_l2": round(a.mean_rel_l2, 4),
                                         "distinct": a.distinct_classes, "passed": a.passed}
                print(name, to, prec, f"{time.time() - t:.0f}s", flush=True)
            row[f"{to}-ms"] = {"fp32": round(ms["fp32"], 2), "int8": round(ms["int8"], 2),
                               "speedup": round(ms["fp32"] / ms["int8"], 2)}
            print("PART", json.dumps({"model": name, "runtime": to, **{k: row[k] for k in (f"{to}-int8", f"{to}-ms")}}),
                  flush=True)
        print("ROW", json.dumps(row), flush=True)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--no-export"]
    main(int(args[0]), int(args[1]), Path(args[2]), args[3:], export="--no-export" not in sys.argv)
