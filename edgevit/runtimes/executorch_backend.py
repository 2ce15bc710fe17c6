"""ExecuTorch backend: runs a ``.pte`` program with ExecuTorch's Python runtime (the same C++ runtime an
Android/iOS app links, with the XNNPACK delegate and the portable/optimized kernels built in).

``threads`` sizes ExecuTorch's thread pool, which is process-wide (like PyTorch's); the runner reports
the size it found after setting it. Names and edgevit metadata come from the manifest beside the
program (``model.pte.json``); a ``.pte`` without one still runs, with generic names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..artifact import ArtifactMetadata
from ..errors import ArtifactError, BackendUnavailableError
from .base import Runner, RunnerInfo, TensorSpec, stored_precision

# ExecuTorch ScalarType codes (c10 numbering) -> numpy dtype names
_DTYPES = {0: "uint8", 1: "int8", 3: "int32", 4: "int64", 5: "float16", 6: "float32", 7: "float64", 11: "bool"}


class ExecuTorchRunner(Runner):
    """``runtimes.load("model.pte", threads=N)``."""

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        from ..exporters.executorch import ExecuTorchManifest, manifest_path, quiet_executorch

        path = Path(path)
        with quiet_executorch():
            try:
                from executorch.extension.pybindings import portable_lib
                from executorch.runtime import Runtime
                from executorch.version import __version__ as version
            except ImportError as exc:
                raise BackendUnavailableError("runtime 'executorch' needs the 'executorch' package: "
                                              "pip install 'edgevit[executorch]'") from exc
        if threads:
            portable_lib._unsafe_reset_threadpool(int(threads))
        try:
            self.program = Runtime.get().load_program(path)
            self.method = self.program.load_method("forward")
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ArtifactError(f"ExecuTorch cannot load {str(path)!r}: {first}") from exc
        self.path = path
        mpath = manifest_path(path)
        self.manifest = ExecuTorchManifest.read(mpath) if mpath.exists() else None
        meta = self.method.metadata
        in_names = [self.manifest.input_name] if self.manifest else [f"input{i}" for i in range(meta.num_inputs())]
        out_names = list(self.manifest.outputs) if self.manifest else [f"output{i}" for i in range(meta.num_outputs())]
        if len(in_names) != meta.num_inputs() or len(out_names) != meta.num_outputs():
            raise ArtifactError(f"{str(mpath)!r} does not describe {str(path)!r} (input/output count differs); "
                                "re-export the model")
        self.inputs = [TensorSpec(n, tuple(meta.input_tensor_meta(i).sizes()),
                                  _DTYPES.get(meta.input_tensor_meta(i).dtype(), "float32"))
                       for i, n in enumerate(in_names)]
        self.outputs = [TensorSpec(n, tuple(meta.output_tensor_meta(i).sizes()),
                                   _DTYPES.get(meta.output_tensor_meta(i).dtype(), "float32"))
                        for i, n in enumerate(out_names)]
        self.metadata = ArtifactMetadata.from_props(self.manifest.metadata) if self.manifest else None
        details: dict[str, str] = {"executorch": version}
        if self.manifest:
            share = self.manifest.delegation.get("outside_compute_share", 0.0)
            details.update({"delegate": self.manifest.delegate, "backends": ",".join(self.manifest.backends) or "none",
                            "non_delegated_ops": str(self.manifest.delegation.get("non_delegated_ops")),
                            "outside_compute_share": f"{share:.4f}"})
        else:
            details["delegate"] = "unknown (no manifest)"
        self.info = RunnerInfo("executorch", stored_precision("fp32", self.metadata), "cpu",
                               portable_lib._threadpool_get_thread_count(), details)

    def _execute(self, tensors: list[Any]) -> list[Any]:
        return self.method.execute(tensors)

    def _torch_inputs(self, feeds: dict[str, np.ndarray]) -> list[Any]:
        import torch

        return [torch.from_numpy(feeds[spec.name]) for spec in self.inputs]

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self._execute(self._torch_inputs(feeds))  # execute() returns clones of the planned outputs
        return {spec.name: v.numpy() for spec, v in zip(self.outputs, values)}

    def benchmark_callable(self, feeds: np.ndarray | Mapping[str, np.ndarray]) -> Callable[[], object]:
        tensors = self._torch_inputs(self._check_feeds(feeds))
        return lambda: self._execute(tensors)

    def delegation_profile(self, feeds: np.ndarray | Mapping[str, np.ndarray], runs: int = 3) -> dict[str, float]:
        """Measured split of one inference: milliseconds inside delegate calls vs in ExecuTorch's own kernels.

        Loads the program a second time with ExecuTorch's event tracer (ETDump) and reads it back with the
        devtools Inspector; the times include the tracer's small per-op overhead.
        """
        import tempfile

        from ..exporters.executorch import quiet_executorch

        with quiet_executorch():
            from executorch.devtools import Inspector
            from executorch.runtime import Runtime

            program = Runtime.get().load_program(self.path, enable_etdump=True, debug_buffer_size=0)
            method = program.load_method("forward")
            tensors = self._torch_inputs(self._check_feeds(feeds))
            method.execute(tensors)  # warm-up, also traced: averaged below with the others
            for _ in range(runs):
                method.execute(tensors)
            with tempfile.TemporaryDirectory(prefix="edgevit-etdump-") as tmp:
                etdump = Path(tmp) / "run.etdp"
                program.write_etdump_result_to_file(str(etdump), str(Path(tmp) / "debug.bin"))
                inspector = Inspector(etdump_path=str(etdump))
        totals = {"delegate_ms": 0.0, "outside_ms": 0.0}
        for block in inspector.event_blocks:
            for event in block.events:
                if event.perf_data is None or event.is_delegated_op:
                    continue  # the ops inside a delegate call are already in its DELEGATE_CALL time
                if event.name == "DELEGATE_CALL":
                    totals["delegate_ms"] += event.perf_data.p50
                elif event.name == "OPERATOR_CALL":
                    totals["outside_ms"] += event.perf_data.p50
        total = totals["delegate_ms"] + totals["outside_ms"]
        return {**totals, "outside_time_share": totals["outside_ms"] / total if total else 0.0}
