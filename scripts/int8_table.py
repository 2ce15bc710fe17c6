"""int8 vs fp32 per family: agreement on the fixed evaluation set and single-thread latency, ORT and OpenVINO.

Usage: python scripts/int8_table.py SIZE N_IMAGES OUT_DIR MODEL [MODEL ...]  (prints one JSON ROW per model)
"""
import sys, time, json, statistics
from pathlib import Path
import numpy as np
from edgevit import pipeline, runtimes
from edgevit.formats import format_options
from edgevit.models import create_model, get_model_card
from edgevit.quantization.accuracy import measure_agreement
size = int(sys.argv[1]); n = int(sys.argv[2]); out = Path(sys.argv[3]); names = sys.argv[4:]
out.mkdir(parents=True, exist_ok=True)
def lat(runner, x, reps=15):
    call = runner.benchmark_callable(x); call(); call()
    ts = []
    for _ in range(reps):
        t = time.perf_counter(); call(); ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3
for name in names:
    card = get_model_card(name); sz = (size, size)
    ref = runtimes.load(create_model(name), input_size=sz)
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    row = {"model": name, "size": size}
    for to, prec in (("onnx", "fp32"), ("onnx", "int8"), ("openvino", "fp32"), ("openvino", "int8")):
        t = time.time()
        p = pipeline.export(name, to, out / f"{name}-{size}-{to}-{prec}" if to == "openvino" else out / f"{name}-{size}-{prec}.onnx",
                            input_size=size, verify=False, format_options=format_options(to, precision=prec) if prec != "fp32" else None).path
        rt = runtimes.load(p, "onnxruntime" if to == "onnx" else "openvino", threads=1, **({"precision": "fp32"} if to == "openvino" else {}))
        row[f"{to}-{prec}-ms"] = round(lat(rt, x), 2)
        if prec == "int8":
            a = measure_agreement(ref, rt, sz, card.mean, card.std, count=n)
            row[f"{to}-int8"] = {"top1": a.top1, "top5": a.top5, "max_rel": round(a.max_rel, 4), "mean_rel_l2": round(a.mean_rel_l2, 4), "distinct": a.distinct_classes}
        print(name, to, prec, "%.0fs" % (time.time() - t), flush=True)
    print("ROW", json.dumps(row), flush=True)
