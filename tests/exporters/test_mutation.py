"""Mutation test of edgevit's verification (issue 19): change one node of an exported ONNX graph (an
attribute flip or an op swap that keeps every shape) and ``verify`` must reject the mutant, in ONNX
Runtime and in OpenVINO f32.

Each family's smallest variant is exported at 64x64 (batch 1) with its reference weights. A mutant is
*killed* when verification reports a failure (or the runtime refuses the graph); a *survivor* fails the
test, unless it is listed in ``EQUIVALENT`` with the argument why the changed graph computes the same
function, or in ``KNOWN_WEAK`` (too small to see at 64x64; each is checked at the default size by the
family test that already exports it there). Verification runs seeded and uniform images
(:func:`edgevit.verify.verify_runner`). The fast tests mutate the first, middle and last occurrence of
A2Mamba's and MAT's export-friendly op kinds; ``-m slow`` adds the other families, their other kinds
(``FAST_KINDS``), a run over every occurrence of every mutable kind, and the user's artifact: the default
224x224 export, every mutable kind at its first, middle and last occurrence, in both runtimes
(``test_verify_rejects_mutants_of_the_default_export``, ~30 min on 2 cores).
Run with ``-rP`` for the per-family table (tried / killed / excluded).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgevit import pipeline, runtimes
from edgevit.runtimes.base import Runner
from edgevit.verify import verify_runner
from tests.mutation_support import MUTATIONS, node_index, verify_rejects

SIZE = (64, 64)
RTOL = 1e-4
FAMILIES = ("s2aformer-mini", "mat-1", "a2mamba-n", "dualformer-t", "partialformer-b0", "emsnet-xxtiny")


# The export-friendly ops of each family first: the fast test mutates these kinds (first/middle/last).
FAST_KINDS: dict[str, tuple[str, ...]] = {
    "s2aformer-mini": ("Softmax", "Sigmoid", "LayerNormalization", "ReduceMean", "Add", "Mul"),
    "mat-1": ("GridSample", "Softmax", "LayerNormalization", "Add", "Mul", "Erf"),
    "a2mamba-n": ("ReduceSum", "Log", "Exp", "Add", "Softmax", "LayerNormalization", "Sigmoid", "Mul"),
    "dualformer-t": ("GreaterOrEqual", "ReduceMax", "DepthToSpace", "Sigmoid", "Exp", "Where", "Div",
                     "LayerNormalization"),
    "partialformer-b0": ("TopK", "CumSum", "ScatterElements", "Floor", "ReduceMean", "Softmax",
                         "LayerNormalization", "Greater"),
    "emsnet-xxtiny": ("MaxPool", "AveragePool", "Softmax", "Sigmoid", "ReduceMean", "Sub", "Erf"),
}

# (family, op kind, mutation), or (family, op kind, occurrence, mutation) for one node at SIZE -> why the
# mutant computes the same function as the original graph.
EQUIVALENT: dict[tuple[str, ...], str] = {
    ("dualformer-t", "GreaterOrEqual", "->Greater"):
        "LSH bits differ only where beta . x == 0 exactly, which a continuous fp32 projection of seeded "
        "normal inputs never hits (the tie rule itself is tested with constructed ties in "
        "test_dualformer_onnx.py)",
    ("dualformer-t", "GreaterOrEqual", "->LessOrEqual"):
        "negating every bit of one hyperplane renames the partitions (code k <-> k xor 2^b): MHPA pools, "
        "weighs (one importance MLP shared by all groups, normalised over groups) and scatters per "
        "partition, so it is invariant to partition labels; differs only on exact zeros, as above",
    ("dualformer-t", "Where", "swap branches"):
        "both Where kinds of MHPA only pick the per-group stabiliser c_k of the segment softmax "
        "e = exp(x - c_k) (group max, or 0 for empty groups); swapped, c_k becomes 0 or the max over the "
        "other groups' tokens, still one finite constant per (group, channel), and intra = sum(e t) / sum(e) "
        "is invariant to it; differs only by exp overflow/underflow (|x| ~ 1 here) or when one group holds "
        "every token. Measured 2.6e-6..3.2e-6 relative, rounding level",
    ("dualformer-t", "Sub", "->Add"):
        "every Sub of DualFormer's graph is MHPA's stabiliser x - c_k of the segment softmax e = exp(x - c_k) "
        "(c_k = group max, per group and channel); exp(x + c_k) = exp(x - c_k) * exp(2 c_k), one factor per "
        "(group, channel), which cancels in intra = sum(e t) / sum(e) over the group; differs only by exp "
        "overflow/underflow or the denominator's EPS clamp (sum(e) >= exp(2 c_k), |c_k| ~ 1 here). Measured "
        "1.0e-6..1.2e-6 relative at 224 in ONNX Runtime and OpenVINO, rounding level",
    ("partialformer-b0", "Floor", "->Ceil"):
        "ceil(s) = floor(s) + 1 for every non-integer score, a constant shift of all scores of a block, "
        "which TopK and the tie rule ignore; it differs only for scores exactly on the 2^-10 grid",
}


# NOT equivalent, and still accepted by verification at 64x64, listed so that any *other* survivor fails the
# test, and so that fixing one of these fails it too (update here). Where the default input size shows them,
# the family test that already exports it there checks this (no extra export).
KNOWN_WEAK: dict[tuple[str, str, str, str], str] = {
    # EMSNet's last C-MHSA softmax runs over a 2x2 map at 64x64, so changing its axis moves the logits by only
    # 1.8e-6 (measured); rejected at 224 (7x7 map, 2.7e-2): test_emsnet_onnx.py
    ("emsnet-xxtiny", "Softmax", "last", "axis"): "tiny last-stage attention map at 64x64, 1.8e-6 relative",
    # The 12th Exp at 64x64 is the decay of stage 1's innermost carry scan (256 tokens: 32 chunks, their end states
    # carried by a 3-step scan): Exp -> Softplus moved the logits 6.8e-5 (ORT) / 8.0e-5 (OpenVINO) relative
    # (issue 20, session 18). The same break of every decay of the exported scan alone is rejected by
    # test_a2mamba_onnx.py::test_scan_export_rejects_a_break_of_any_decay_or_chunk_sum.
    ("a2mamba-n", "Exp", "11", "->Softplus"): "stage 1's innermost carry decay at 64x64, <= 8e-5 relative",
}


@dataclass
class Mutant:
    family: str
    op: str
    occurrence: int
    total: int
    mutation: str
    mutate: Callable[[onnx.NodeProto], None]

    @property
    def key(self) -> tuple[str, str, str]:
        return self.family, self.op, self.mutation

    @property
    def weak_key(self) -> tuple[str, str, str, str]:
        return self.family, self.op, "last" if self.occurrence == self.total - 1 else str(self.occurrence), \
            self.mutation

    def label(self) -> str:
        return f"{self.op}#{self.occurrence + 1}/{self.total} {self.mutation}"


@functools.cache
def _artifact(name: str, out_dir: str, size: tuple[int, int] = SIZE) -> Path:
    path = Path(out_dir) / f"{name}-{size[0]}x{size[1]}.onnx"
    report = pipeline.export(name, "onnx", path, input_size=size, batch=1, rtol=RTOL)
    assert report.parity is not None and report.parity.passed
    return path


class _CachedReference:
    """The PyTorch reference runner, run once per input (verify_runner feeds every mutant the same batch)."""

    def __init__(self, runner: Runner) -> None:
        self._runner = runner
        self._cache: dict[bytes, dict[str, np.ndarray]] = {}
        self.inputs, self.metadata, self.info = runner.inputs, runner.metadata, runner.info

    def run(self, x):
        key = np.asarray(x).tobytes()
        if key not in self._cache:
            self._cache[key] = self._runner.run(x)
        return self._cache[key]


@functools.cache
def _reference(name: str, size: tuple[int, int] = SIZE) -> _CachedReference:
    from edgevit.models import create_model

    return _CachedReference(runtimes.load(create_model(name), input_size=size))


def mutants(name: str, proto: onnx.ModelProto, kinds: tuple[str, ...] | None, every: bool = False) -> list[Mutant]:
    """First, middle and last occurrence of each kind (``kinds=None``: every mutable kind; ``every``: every
    occurrence)."""
    by_op: dict[str, list[int]] = {}
    for i, node in enumerate(proto.graph.node):
        by_op.setdefault(node.op_type, []).append(i)
    out = []
    for op in (kinds if kinds is not None else sorted(set(by_op) & set(MUTATIONS))):
        nodes = by_op.get(op, [])
        assert nodes or kinds is None, f"{name} has no {op} node to mutate"
        picks = range(len(nodes)) if every else sorted({0, len(nodes) // 2, len(nodes) - 1})
        for k in picks:
            for mutation, mutate in MUTATIONS[op]:
                out.append(Mutant(name, op, k, len(nodes), mutation, mutate))
    return out


def rejected(name: str, artifact: Path, mutant: Mutant, out_dir: Path, backend: str,
             size: tuple[int, int] = SIZE) -> tuple[bool, str]:
    proto = onnx.load(str(artifact))
    mutant.mutate(proto.graph.node[node_index(proto, mutant.op, mutant.occurrence)])
    path = out_dir / f"{name}-mutant.onnx"
    onnx.save(proto, str(path))
    try:
        options = {"precision": "f32"} if backend == "openvino" else {}
        report = verify_runner(_reference(name, size), runtimes.load(path, backend, **options), 1, size,  # type: ignore[arg-type]
                               rtol=RTOL)
    except Exception as exc:  # noqa: BLE001 - a runtime that refuses the mutated graph rejects it too
        return True, f"refused ({type(exc).__name__})"
    return not report.passed, f"max rel {report.worst_rel:.2e}"


def _run(name: str, kinds: tuple[str, ...] | None, backend: str, tmp_path: Path,
         tmp_path_factory: pytest.TempPathFactory, *, every: bool = False, size: tuple[int, int] = SIZE) -> None:
    artifact = _artifact(name, str(tmp_path_factory.getbasetemp()), size)
    all_mutants = mutants(name, onnx.load(str(artifact)), kinds, every)
    # occurrence-specific entries describe the graph at SIZE; other sizes have their own lists
    equivalent_at, known_weak = (EQUIVALENT, KNOWN_WEAK) if size == SIZE else ({}, KNOWN_WEAK_AT.get(size, {}))
    survivors, killed, excluded, known = [], 0, 0, []
    for m in all_mutants:
        why = EQUIVALENT.get(m.key) or equivalent_at.get(m.weak_key)
        if why:
            excluded += 1
            print(f"  {name} {backend} {m.label():40s} EXCLUDED (equivalent: {why[:60]}...)")
            continue
        dead, how = rejected(name, artifact, m, tmp_path, backend, size)
        killed += dead
        print(f"  {name} {backend} {m.label():40s} {'killed' if dead else 'SURVIVED'} ({how})")
        if m.weak_key in known_weak:
            known.append((m.weak_key, dead))
        elif not dead:
            survivors.append(f"{m.label()} ({how})")
    print(f"{name} {backend} {size[0]}x{size[1]}: tried {len(all_mutants)}, killed {killed}, excluded {excluded}, "
          f"known weak {sum(not d for _, d in known)}, other survivors {len(survivors)}")
    assert not survivors, f"{name}: verification in {backend} accepted mutants: {survivors}"
    assert not [k for k, dead in known if dead], "a KNOWN_WEAK mutant is now killed: remove it from the list"


def _families(fast: tuple[str, ...]) -> list:
    """Exports dominate the cost (~20-60 s each): the fast suite mutates the families whose ops passed
    verification before the reference weights (A2Mamba's scan, MAT's sampler); the rest run with -m slow."""
    return [n if n in fast else pytest.param(n, marks=pytest.mark.slow) for n in FAMILIES]


# In the fast suite A2Mamba and MAT mutate only their leading, export-friendly kinds (scan; sampler and
# attention): generic ops (Add, Mul, norms) are always killed and -m slow mutates every kind anyway.
FAST_SUITE_KINDS = {"a2mamba-n": 4, "mat-1": 2}


@pytest.mark.parametrize("name", _families(("a2mamba-n", "mat-1")))
def test_verify_rejects_single_node_mutants_in_onnxruntime(name: str, tmp_path: Path,
                                                         tmp_path_factory: pytest.TempPathFactory) -> None:
    _run(name, FAST_KINDS[name][:FAST_SUITE_KINDS.get(name)], "onnxruntime", tmp_path, tmp_path_factory)


@pytest.mark.parametrize("name", _families(()))  # ~100 s per family: the fast suite mutates in ORT only
def test_verify_rejects_single_node_mutants_in_openvino(name: str, tmp_path: Path,
                                                      tmp_path_factory: pytest.TempPathFactory) -> None:
    pytest.importorskip("openvino")
    _run(name, FAST_KINDS[name][:3], "openvino", tmp_path, tmp_path_factory)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("name", FAMILIES)
def test_verify_rejects_every_single_node_mutant(name: str, backend: str, tmp_path: Path,
                                                 tmp_path_factory: pytest.TempPathFactory) -> None:
    if backend == "openvino":
        pytest.importorskip("openvino")
    _run(name, None, backend, tmp_path, tmp_path_factory, every=True)


# NOT equivalent and accepted by verification of the default-size export, per size, each with where it is checked.
KNOWN_WEAK_AT: dict[tuple[int, int], dict[tuple[str, str, str, str], str]] = {(224, 224): {
    # The graph's last Exp is the decay of the carried state into each step of a chunk in stage 3's last scan (the
    # top level's exp(prefix sums)). With the reference weights that scan's carried states move the logits least:
    # Exp -> Softplus changed them by at most 1.7e-5 relative on every frame tried (4 greys, 66 flat colours incl.
    # the card's two, seeded noise; ONNX Runtime, issue 20 session 17). The same break in the exported scan alone
    # is rejected by test_a2mamba_onnx.py::test_scan_export_rejects_a_break_of_any_decay_or_chunk_sum.
    ("a2mamba-n", "Exp", "last", "->Softplus"): "stage 3's last carry decay, <= 1.7e-5 relative at 224",
}}


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("name", FAMILIES)
def test_verify_rejects_mutants_of_the_default_export(name: str, backend: str, tmp_path: Path,
                                                      tmp_path_factory: pytest.TempPathFactory) -> None:
    """The user's artifact: the default 224x224 export (batch 1 here). Every mutable op kind, its first,
    middle and last occurrence; the closing note of issue 19 lists this table (run with -rP)."""
    if backend == "openvino":
        pytest.importorskip("openvino")
    _run(name, None, backend, tmp_path, tmp_path_factory, size=(224, 224))


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_a2mamba_last_carry_mutants_are_rejected_at_224(backend: str, tmp_path_factory: pytest.TempPathFactory,
                                                        tmp_path: Path) -> None:
    """The graph's last ReduceSum belongs to stage 3's last scan (L = 196 at 224: 25 chunks of 8, their chunk-end
    states carried by a chunked scan of their own, 3 chunks of 8): it sums a chunk's log-decay for the innermost
    carry, the part of A2Mamba-N that moves its logits least. Made a mean, it is rejected: seeded noise alone moves
    the logits too little to see it under 1e-4 (5e-5..1e-4 on grey frames); A2Mamba-N's verification colours
    (1.9e-4 / 2.4e-4) do. The last Exp is KNOWN_WEAK_AT 224 (see there)."""
    if backend == "openvino":
        pytest.importorskip("openvino")
    path = Path(str(tmp_path_factory.getbasetemp())) / "a2mamba-n-224.onnx"
    if not path.exists():
        pipeline.export("a2mamba-n", "onnx", path, input_size=(224, 224), batch=1, rtol=RTOL)
    rejected, how = verify_rejects(path, "ReduceSum", -1, "->ReduceMean", tmp_path, backend)
    assert rejected, f"last ReduceSum ->ReduceMean: verify accepted it ({how})"
