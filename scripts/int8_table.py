"""int8 vs fp32 per family and runtime (ONNX Runtime, OpenVINO, ExecuTorch/XNNPACK), measured in one run.

Usage: python scripts/int8_table.py [--no-export] [--formats onnx,openvino,executorch] SIZE N_IMAGES OUT_DIR MODEL...

Phase 1, per model: the fp32 PyTorch logits of the first N_IMAGES evaluation images (computed once, shared by
every runtime), then per format the fp32 and int8 exports (default recipe: the default synthetic calibration set,
the family's keep-in-float rules) and the int8 agreement report on those images, computed by the gate's
own comparison (edgevit.quantization.accuracy.compare_logits). An artifact already in OUT_DIR (an
interrupted run) is reused; ``--no-export`` skips a format whose artifacts are missing.
Phase 2, after every export, so no export overlaps a timing: single-thread batch-1 median latency (15 runs
after 2 warm-ups) of each fp32/int8 pair and the speed-up. Run it on a quiet machine.

Prints a JSON ``PART`` line per (model, format) as it is measured, a ``ROW`` per model, and a markdown table.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from edgevit import pipeline, runtimes
from edgevit.errors import EdgevitError
from edgevit.formats import format_options
from edgevit.images import to_tensor
from edgevit.models import create_model, get_model_card
from edgevit.quantization.accuracy import compare_logits, evaluation_images
from edgevit.runtimes.base import run_in_calls

BACKEND = {"onnx": "onnxruntime", "openvino": "openvino", "executorch": "executorch"}
SUFFIX = {"onnx": ".onnx", "openvino": "", "executorch": ".pte"}


def runner_for(path: Path, fmt: str, threads: int) -> runtimes.Runner:
    extra = {"precision": "f32"} if fmt == "openvino" else {}  # float parts in f32: the gate's setting
    return runtimes.load(path, BACKEND[fmt], threads=threads, **extra)


def logits(runner: runtimes.Runner, x: np.ndarray) -> np.ndarray:
    return next(iter(run_in_calls(runner, x, 1).values()))


def latency_ms(runner: runtimes.Runner, x: np.ndarray, reps: int = 15) -> float:
    call = runner.benchmark_callable(x)
    call(), call()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def export_and_judge(name: str, size: int, n: int, out: Path, formats: list[str], export: bool) -> dict:
    card = get_model_card(name)
    x = to_tensor(evaluation_images(n, (size, size)), card.mean, card.std)
    ref_file = out / f"{name}-{size}-{n}-fp32-logits.npy"
    if not ref_file.exists():
        ref = runtimes.load(create_model(name), input_size=(size, size), threads=2)
        np.save(ref_file, logits(ref, x))
    ref_logits = np.load(ref_file)
    row: dict = {"model": name, "size": size, "images": n}
    for fmt in formats:
        paths = {p: out / f"{name}-{size}-{fmt}-{p}{SUFFIX[fmt]}" for p in ("fp32", "int8")}
        if not export and not all(p.exists() for p in paths.values()):
            continue
        part: dict = {}
        for prec, path in paths.items():
            if not path.exists():
                t = time.time()
                opts = format_options(fmt, precision="int8") if prec == "int8" else None
                try:
                    pipeline.export(name, fmt, path, input_size=size, verify=False, format_options=opts)
                except EdgevitError as exc:  # a failed export is a row of the table, not the end of the run
                    part["error"] = f"{prec} export: {str(exc).splitlines()[0]}"
                    break
                part[f"{prec}_export_s"] = round(time.time() - t)
            files = [path] if path.is_file() else list(path.rglob("*"))
            part[f"{prec}_mb"] = round(sum(f.stat().st_size for f in files if f.is_file()) / 2**20, 1)
        if "error" in part:
            row[fmt] = part
            print("PART", json.dumps({"model": name, "format": fmt, **part}), flush=True)
            continue
        t = time.time()
        try:
            runner = runner_for(paths["int8"], fmt, threads=2)
            a = compare_logits(ref_logits, logits(runner, x))
        except Exception as exc:  # an int8 program that fails to run is a row too (e.g. an XNNPACK runtime error)
            row[fmt] = {**part, "error": f"int8 run: {(str(exc).strip().splitlines() or [type(exc).__name__])[0]}"}
            print("PART", json.dumps({"model": name, "format": fmt, **row[fmt]}), flush=True)
            continue
        part["agreement"] = {"top1_decisive": round(a.top1_decisive, 4), "decisive": a.decisive,
                             "top1": round(a.top1, 4), "top5": round(a.top5, 4), "max_rel": round(a.max_rel, 4),
                             "mean_rel_l2": round(a.mean_rel_l2, 4), "passed": a.passed,
                             "label": runner.info.precision}
        part["eval_s"] = round(time.time() - t)
        row[fmt] = part
        print("PART", json.dumps({"model": name, "format": fmt, **part}), flush=True)
    return row


def add_latencies(row: dict, size: int, out: Path) -> None:
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    for fmt, part in row.items():
        if fmt not in BACKEND or "error" in part:
            continue
        ms = {p: latency_ms(runner_for(out / f"{row['model']}-{size}-{fmt}-{p}{SUFFIX[fmt]}", fmt, 1), x)
              for p in ("fp32", "int8")}
        part["ms"] = {"fp32": round(ms["fp32"], 2), "int8": round(ms["int8"], 2),
                      "speedup": round(ms["fp32"] / ms["int8"], 2)}
        print("LAT", row["model"], fmt, json.dumps(part["ms"]), flush=True)


def markdown(rows: list[dict]) -> str:
    lines = ["| model | runtime | top-1 decisive (n) | top-1 all | top-5 | logit err mean L2 / max | gate "
             "| fp32 ms | int8 ms | speed-up | MB fp32 -> int8 |", "|" + "---|" * 11]
    for row in rows:
        for fmt in BACKEND:
            if fmt not in row:
                continue
            p = row[fmt]
            if "error" in p:
                lines.append(f"| {row['model']} | {BACKEND[fmt]} | {p['error']} |" + " |" * 9)
                continue
            a = p["agreement"]
            ms = p.get("ms", {})
            lines.append(f"| {row['model']} | {BACKEND[fmt]} | {a['top1_decisive']:.1%} ({a['decisive']}) "
                         f"| {a['top1']:.1%} | {a['top5']:.1%} | {a['mean_rel_l2']:.3f} / {a['max_rel']:.3f} "
                         f"| {'pass' if a['passed'] else '**fail**'} | {ms.get('fp32', '-')} | {ms.get('int8', '-')} "
                         f"| {ms.get('speedup', '-')}x | {p['fp32_mb']} -> {p['int8_mb']} |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    export = "--no-export" not in argv
    formats = list(BACKEND)
    args = [a for a in argv if a != "--no-export"]
    if "--formats" in args:
        i = args.index("--formats")
        formats = args[i + 1].split(",")
        del args[i:i + 2]
    size, n, out, names = int(args[0]), int(args[1]), Path(args[2]), args[3:]
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    rows = [export_and_judge(name, size, n, out, formats, export) for name in names]
    print(f"phase 1 (exports + agreement): {time.time() - start:.0f} s", flush=True)
    for row in rows:
        add_latencies(row, size, out)
        print("ROW", json.dumps(row), flush=True)
    print(f"total: {time.time() - start:.0f} s\n")
    print(markdown(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
