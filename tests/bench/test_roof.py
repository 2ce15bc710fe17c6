"""The microarchitecture table, CPU identification and the measured GEMM roof."""

from __future__ import annotations

import re

import pytest

from edgevit.bench import roof, uarch

INTEL_VM = """vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 207
model name\t: Intel(R) Xeon(R) Processor
cpu MHz\t\t: 2100.000
flags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512_bf16 avx512_vnni avx512_fp16
"""
EPYC = """vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC 9654 96-Core Processor
flags\t\t: fpu avx avx2 fma avx512f avx512_bf16 avx512_vnni
"""


def test_table_entries_are_consistent_and_sourced() -> None:
    seen: set[tuple[str, int, int]] = set()
    for arch in uarch.TABLE:
        assert arch.vendor in ("GenuineIntel", "AuthenticAMD")
        for model in arch.models:  # one entry per (vendor, family, model)
            assert (arch.vendor, arch.family, model) not in seen, arch.name
            seen.add((arch.vendor, arch.family, model))
        # fp32 MAC/cycle is FMA units x fp32 lanes of one unit
        fp32 = arch.macs["fp32"][0][0]
        assert fp32 == arch.fma_units * arch.vector_bits // 32, arch.name
        for macs, flag, _unit in (u for units in arch.macs.values() for u in units):
            if flag == "avx512_bf16":  # VDPBF16PS: two bf16 products per fp32 lane
                assert macs == 2 * fp32, arch.name
            if flag == "avx512_vnni":  # VPDPBUSD: four int8 products per 32-bit lane
                assert macs == 4 * fp32, arch.name
            if flag == "amx_bf16":  # 1024 bf16 ops (512 MACs) per cycle
                assert macs == 512
            if flag == "amx_int8":
                assert macs == 1024
        for ref in re.findall(r"\[[A-Z0-9-]+\]", arch.source):
            assert ref in uarch.__doc__, ref  # every source is spelled out in the module docstring
    by_name = {a.name: a for a in uarch.TABLE}
    assert by_name["Zen 4"].macs["fp32"][0][0] == 16  # AVX-512 on two 256-bit pipes, not 32
    assert by_name["Ice Lake-SP"].macs["fp32"][0][0] == 32
    for sku in uarch.SKU_CLOCKS:
        assert 1.0 < sku.base_ghz <= (sku.all_core_ghz or sku.max_ghz) <= sku.max_ghz < 6.0
        assert "[ARK]" in sku.source


def test_identifies_cpus_from_family_and_model_and_gates_units_on_flags() -> None:
    vm = uarch.read_cpuid(INTEL_VM)
    assert uarch.lookup(vm).name == "Emerald Rapids"
    # no amx_bf16 flag (hidden by the hypervisor): bf16 counts the AVX512-BF16 unit, not AMX
    bf16 = uarch.theoretical_peak("bf16", cores=2, cpu=vm, cpuinfo_mhz=2100.0)
    assert bf16.macs_per_cycle == 64 and bf16.gmacs_per_s == pytest.approx(2 * 2.1 * 64)
    assert "reported" in bf16.source
    epyc = uarch.read_cpuid(EPYC)
    fp32 = uarch.theoretical_peak("fp32", cores=4, cpu=epyc)
    assert uarch.lookup(epyc).name == "Zen 4" and fp32.macs_per_cycle == 16
    assert fp32.ghz == 3.55 and "all-core" in fp32.source  # the SKU's all-core boost, not the max
    assert uarch.theoretical_peak("fp16", cores=4, cpu=epyc).gmacs_per_s is None  # no fp16 unit on Zen 4
    unknown = uarch.read_cpuid("vendor_id: GenuineIntel\ncpu family: 6\nmodel: 1\nflags: fma avx2\n")
    generic = uarch.theoretical_peak("fp32", cores=1, cpu=unknown, cpuinfo_mhz=3000.0)
    assert generic.macs_per_cycle == 16 and "not in the table" in generic.source


def test_row_precision_maps_to_its_roof() -> None:
    assert [roof.roof_precision(p) for p in ("fp32", "f32", "bf16", "int8+bf16", None, "fp16")] == [
        "fp32", "fp32", "bf16", "int8", "fp32", "fp16"]
    assert roof.probe_precisions({"fma", "avx2"}) == ["fp32"]
    assert roof.probe_precisions({"fma", "amx_bf16", "amx_int8"}) == ["fp32", "bf16", "int8"]


def test_measured_fp32_roof_is_within_a_sane_factor_of_theory() -> None:
    probe = roof.measure_roof(threads=1, precisions=["fp32"], seconds=0.2)["fp32"]
    assert probe.error is None and probe.theoretical.gmacs_per_s
    # A loaded shared machine reaches a few % of theory; a unit mix-up (FLOP vs MAC, cores vs threads, GHz vs
    # MHz) lands outside [1/50, 2.5] (2.5 leaves room for turbo above the reported clock).
    assert 0.02 < probe.fraction_of_theory < 2.5, probe.to_dict()


def test_bandwidth_probe_is_a_curve_over_sizes() -> None:
    curve = roof.measure_bandwidth(1, sizes_mib=(0.25, 64.0), seconds=0.05)
    assert [p.mib for p in curve] == [0.25, 64.0]
    # any machine streams between 0.5 GB/s and 2 TB/s; cache-sized operands are not slower than DRAM-sized
    assert all(0.5 < p.gb_per_s < 2000 for p in curve) and curve[0].gb_per_s >= 0.8 * curve[1].gb_per_s
