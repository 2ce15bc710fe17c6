"""Op-level benchmarks: one export-friendly op timed alone, in each of its formulations.

Model benchmarks (``suite``) say how fast a network runs; these say what a replacement op costs compared
with the naive form it stands in for, so a slow model can be traced to (or cleared of) its custom ops.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from .environment import collect
from .timing import TimingPolicy, measure_repeated

SCAN_POLICY = TimingPolicy(warmup_iters=1, warmup_seconds=0.2, iters=5, min_seconds=0.5, max_seconds=20.0,
                           repeats=3)


def _scan_inputs(batch: int, channels: int, length: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Typical magnitudes: dt = softplus(N(0,1) + bias) in ~(0.05, 3), A = -exp(N(0,1))."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, channels, length, generator=g)
    delta = torch.randn(batch, channels, length, generator=g)
    a = -torch.exp(torch.randn(channels, 1, generator=g))
    bs = torch.randn(batch, 1, length, generator=g)
    bias = torch.randn(channels, generator=g)
    return u, delta, a, bs, bias


def _ms(fn: Callable[[], object], policy: TimingPolicy) -> dict[str, float]:
    m = measure_repeated(fn, 1, policy)
    p = m.pooled
    return {"ms_p50": p.p50, "ms_mean": p.mean, "spread": m.spread, "iterations": p.count}


def selective_scan_benchmark(length: int = 3136, channels: Sequence[int] = (32, 48), batch: int = 1,
                             threads: int | None = None, policy: TimingPolicy = SCAN_POLICY,
                             include_custom: bool = True) -> dict[str, object]:
    """Time the ``d_state = 1`` selective scan alone (spec a2mamba §5.2), per channel count.

    Forms: the sequential reference loop (fp64, one step per token), the fast eager kernel (chunked
    matrix form, fp32), and ONNX Runtime on the decomposed graph (and on the custom-node graph, whose
    function body ORT inlines). Each entry also carries the form's max relative error against the
    reference. Returns a JSON-able dict.
    """
    import onnxruntime as ort

    from ..exporters.onnx_scan import export_selective_scan
    from ..models.ops.selective_scan import selective_scan_chunked, selective_scan_reference

    if threads:
        torch.set_num_threads(threads)
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    results: dict[str, object] = {"length": length, "batch": batch, "threads": torch.get_num_threads(),
                                  "environment": collect(), "cases": []}
    for c in channels:
        args = _scan_inputs(batch, c, length, seed=c)
        ref = selective_scan_reference(*args).double()

        def err(out: np.ndarray | torch.Tensor, ref: torch.Tensor = ref) -> float:
            o = torch.as_tensor(np.asarray(out)).double()
            return float((o - ref).abs().max() / ref.abs().max())

        case: dict[str, object] = {"channels": c}
        case["reference_loop_fp64"] = _ms(lambda: selective_scan_reference(*args), policy)
        with torch.no_grad():
            case["eager_chunked"] = {**_ms(lambda: selective_scan_chunked(*args), policy),
                                     "max_rel_err": err(selective_scan_chunked(*args))}
        feeds = {name: t.numpy() for name, t in zip(("u", "delta", "A", "Bs", "delta_bias"), args)}
        for mode in ("decomposed", "custom") if include_custom else ("decomposed",):
            proto = export_selective_scan(args, mode)
            session = ort.InferenceSession(proto.SerializeToString(), options,
                                           providers=["CPUExecutionProvider"])
            names = [i.name for i in session.get_inputs()]
            inputs = {n: feeds[n] for n in names}
            case[f"ort_{mode}"] = {**_ms(lambda s=session, i=inputs: s.run(None, i), policy),
                                   "max_rel_err": err(session.run(None, inputs)[0]),
                                   "nodes": len(proto.graph.node)}
        results["cases"].append(case)  # type: ignore[union-attr]
    return results
