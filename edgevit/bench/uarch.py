"""Theoretical CPU peak from a small, sourced table of microarchitectures.

Why a table and not a rule on ISA flags: the same flag means different hardware. AVX-512 runs on two 512-bit
FMA units on Ice Lake-SP/Sapphire Rapids, on one on some Skylake-SP SKUs, and on two 256-bit units on AMD Zen 4
(double-pumped), so "avx512f -> 32 fp32 MAC/cycle" is wrong for half the machines. The core is identified by
vendor, family and model from /proc/cpuinfo (the model name of a cloud VM is often just "Intel Xeon Processor");
the reduced-precision units (AMX, VNNI, AVX512-BF16/FP16) count only when the kernel exposes their flag, because
a hypervisor may hide them and then no library can use them.

Every figure is per core per cycle, 1 MAC = 1 multiply + 1 add (= 2 FLOP). Sources:
- [INTEL-OPT] Intel 64 and IA-32 Architectures Optimization Reference Manual, Vol. 1 (2024): port/unit tables
  for Skylake-SP, Ice Lake, Golden Cove (Sapphire/Emerald Rapids), Redwood Cove (Granite Rapids).
- [INTEL-AMX] Intel, "Accelerate AI workloads with Intel AMX" (2023): per core and cycle 2048 INT8 ops and
  1024 BF16 ops (ops count multiply and add separately); AMX-FP16 (Granite Rapids) matches BF16.
- [AMD-17H] AMD Software Optimization Guide for Family 17h (pub. 55723 Zen/Zen+, 56305 Zen 2): FP pipes.
- [AMD-19H] AMD Software Optimization Guide for Family 19h (pub. 56665 Zen 3, 57647 Zen 4): Zen 4 executes
  512-bit ops on 256-bit datapaths (two FMA pipes x 256 bit).
- [AMD-1AH] AMD Software Optimization Guide for Family 1Ah (pub. 58455, Zen 5): 512-bit datapaths on desktop
  and server parts (mobile Zen 5 keeps 256-bit).
- [ARK] Intel ARK / AMD product pages for the SKU clocks in :data:`SKU_CLOCKS`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

PRECISIONS = ("fp32", "bf16", "fp16", "int8")
Unit = tuple[int, str, str]  # (MAC/cycle/core, ISA flag, description)


@dataclass(frozen=True)
class Microarchitecture:
    """One core design. ``macs`` maps a precision to its units, widest first: (MAC/cycle/core, the ISA flag that
    enables it, description); the first unit whose flag the CPU exposes counts."""

    name: str
    vendor: str  # /proc/cpuinfo vendor_id
    family: int
    models: tuple[int, ...]
    fma_units: int
    vector_bits: int  # width of one FMA datapath
    macs: dict[str, tuple[Unit, ...]]
    source: str
    note: str = ""

    def macs_per_cycle(self, precision: str, flags: set[str]) -> tuple[int, str] | None:
        for macs, flag, unit in self.macs.get(precision, ()):
            if flag in flags:
                return macs, unit
        return None


def _r(lo: int, hi: int) -> tuple[int, ...]:
    return tuple(range(lo, hi + 1))


def _avx512(fma: int, lanes_bits: int) -> dict[str, tuple[Unit, ...]]:
    """fp32/bf16/int8 MAC/cycle of ``fma`` FMA pipes of ``lanes_bits`` bits (dot-product instructions)."""
    lanes = lanes_bits // 32
    return {"fp32": ((fma * lanes, "fma", f"{fma} FMA x {lanes} fp32"),),
            "bf16": ((fma * lanes * 2, "avx512_bf16", f"{fma} x {lanes} VDPBF16PS pairs"),),
            "int8": ((fma * lanes * 4, "avx512_vnni", f"{fma} x {lanes} VPDPBUSD quads"),)}


def _with_amx(fp16: tuple[Unit, ...]) -> dict[str, tuple[Unit, ...]]:
    """Golden Cove+ server cores: AMX tiles first, the AVX-512 units where a hypervisor hides AMX."""
    base = _avx512(2, 512)
    return {"fp32": base["fp32"], "fp16": fp16,
            "bf16": ((512, "amx_bf16", "AMX-BF16: 1024 bf16 ops/cycle [INTEL-AMX]"),) + base["bf16"],
            "int8": ((1024, "amx_int8", "AMX-INT8: 2048 int8 ops/cycle [INTEL-AMX]"),) + base["int8"]}


_AVX512_FP16 = ((64, "avx512_fp16", "2 FMA x 32 fp16"),)

TABLE: tuple[Microarchitecture, ...] = (
    Microarchitecture("Skylake-SP/Cascade Lake/Cooper Lake", "GenuineIntel", 6, (85,), 2, 512, _avx512(2, 512),
                      "[INTEL-OPT]", "Xeon Bronze/Silver and some Gold 5xxx SKUs have one 512-bit FMA unit: half"),
    Microarchitecture("Ice Lake-SP", "GenuineIntel", 6, (106, 108), 2, 512, _avx512(2, 512), "[INTEL-OPT]"),
    Microarchitecture("Sapphire Rapids", "GenuineIntel", 6, (143,), 2, 512,
                      _with_amx(_AVX512_FP16), "[INTEL-OPT], [INTEL-AMX]"),
    Microarchitecture("Emerald Rapids", "GenuineIntel", 6, (207,), 2, 512,
                      _with_amx(_AVX512_FP16), "[INTEL-OPT], [INTEL-AMX]", "same core as Sapphire Rapids (Raptor Cove)"),
    Microarchitecture("Granite Rapids", "GenuineIntel", 6, (173, 174), 2, 512,
                      _with_amx(((512, "amx_fp16", "AMX-FP16: 1024 fp16 ops/cycle [INTEL-AMX]"),) + _AVX512_FP16),
                      "[INTEL-OPT], [INTEL-AMX]"),
    Microarchitecture("Skylake..Comet Lake (client)", "GenuineIntel", 6, (78, 94, 142, 158, 165, 166), 2, 256,
                      {"fp32": ((16, "fma", "2 FMA x 8 fp32"),)}, "[INTEL-OPT]"),
    Microarchitecture("Alder/Raptor Lake (P-core)", "GenuineIntel", 6, (151, 154, 183, 186, 191), 2, 256,
                      {"fp32": ((16, "fma", "2 FMA x 8 fp32"),), "int8": ((64, "avx_vnni", "2 x 8 AVX-VNNI quads"),)},
                      "[INTEL-OPT]", "E-cores reach half; the figure assumes P-cores"),
    Microarchitecture("Zen/Zen+", "AuthenticAMD", 23, (1, 8, 17, 24), 2, 128,
                      {"fp32": ((8, "fma", "2 FMA x 4 fp32"),)}, "[AMD-17H]"),
    Microarchitecture("Zen 2", "AuthenticAMD", 23, (49, 71, 96, 104, 113, 144), 2, 256,
                      {"fp32": ((16, "fma", "2 FMA x 8 fp32"),)}, "[AMD-17H]"),
    Microarchitecture("Zen 3", "AuthenticAMD", 25, _r(0x00, 0x0F) + _r(0x20, 0x2F) + _r(0x40, 0x5F), 2, 256,
                      {"fp32": ((16, "fma", "2 FMA x 8 fp32"),)}, "[AMD-19H]"),
    Microarchitecture("Zen 4", "AuthenticAMD", 25, _r(0x10, 0x1F) + _r(0x60, 0x7F) + _r(0xA0, 0xAF), 2, 256,
                      _avx512(2, 256), "[AMD-19H]", "AVX-512 executes on two 256-bit pipes"),
    Microarchitecture("Zen 5", "AuthenticAMD", 26, _r(0x00, 0x1F) + _r(0x40, 0x4F), 2, 512, _avx512(2, 512),
                      "[AMD-1AH]", "mobile Zen 5 (Strix) has 256-bit pipes: half"),
)


@dataclass(frozen=True)
class SkuClock:
    pattern: str  # regular expression on the /proc/cpuinfo model name
    base_ghz: float
    all_core_ghz: float | None
    max_ghz: float
    source: str


SKU_CLOCKS: tuple[SkuClock, ...] = (
    SkuClock(r"Gold 6426Y", 2.5, None, 4.1, "[ARK] Intel Xeon Gold 6426Y"),
    SkuClock(r"Platinum 8480\+", 2.0, 3.0, 3.8, "[ARK] Intel Xeon Platinum 8480+"),
    SkuClock(r"EPYC 9654\b", 2.4, 3.55, 3.7, "[ARK] AMD EPYC 9654"),
    SkuClock(r"EPYC 7763\b", 2.45, None, 3.5, "[ARK] AMD EPYC 7763"),
)


@dataclass(frozen=True)
class CpuId:
    vendor: str
    family: int | None
    model: int | None
    model_name: str
    flags: frozenset[str]


def read_cpuid(text: str | None = None) -> CpuId:
    """The first processor's identity from /proc/cpuinfo (``text`` for tests)."""
    if text is None:
        try:
            text = Path("/proc/cpuinfo").read_text()
        except OSError:
            text = ""
    info: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info.setdefault(key.strip(), value.strip())
    as_int = lambda v: int(v) if v and v.isdigit() else None  # noqa: E731
    return CpuId(info.get("vendor_id", ""), as_int(info.get("cpu family")), as_int(info.get("model")),
                 info.get("model name") or info.get("Model", ""), frozenset((info.get("flags") or info.get("Features") or "").split()))


def lookup(cpu: CpuId) -> Microarchitecture | None:
    for arch in TABLE:
        if arch.vendor == cpu.vendor and arch.family == cpu.family and cpu.model in arch.models:
            return arch
    return None


@dataclass(frozen=True)
class Clock:
    base_ghz: float | None
    all_core_ghz: float | None
    max_ghz: float | None
    source: str

    @property
    def sustained_ghz(self) -> float:
        """The clock a multi-core GEMM runs at: all-core turbo if known, else base, else the reported one."""
        return self.all_core_ghz or self.base_ghz or self.max_ghz or 2.0


def _sysfs_ghz(name: str) -> float | None:
    try:
        return int(Path(f"/sys/devices/system/cpu/cpu0/cpufreq/{name}").read_text()) / 1e6
    except (OSError, ValueError):
        return None


def clock(cpu: CpuId, cpuinfo_mhz: float | None = None) -> Clock:
    """Base/all-core/max clocks: the SKU table, else the kernel's cpufreq files, else the model name's "@ x GHz",
    else the MHz /proc/cpuinfo reports (on VMs usually the nominal clock)."""
    for sku in SKU_CLOCKS:
        if re.search(sku.pattern, cpu.model_name):
            return Clock(sku.base_ghz, sku.all_core_ghz, sku.max_ghz, sku.source)
    base, top = _sysfs_ghz("base_frequency"), _sysfs_ghz("cpuinfo_max_freq")
    if base or top:
        return Clock(base, None, top, "sysfs cpufreq (base_frequency / cpuinfo_max_freq)")
    m = re.search(r"@\s*([\d.]+)\s*GHz", cpu.model_name)
    if m:
        return Clock(float(m.group(1)), None, None, "nominal clock in the model name")
    if cpuinfo_mhz:
        return Clock(cpuinfo_mhz / 1e3, None, None, "/proc/cpuinfo cpu MHz (reported, SKU unknown)")
    return Clock(None, None, None, "unknown clock: 2.0 GHz assumed")


@dataclass(frozen=True)
class TheoreticalPeak:
    precision: str
    gmacs_per_s: float | None  # at the sustained clock; None when the ISA lacks a unit for this precision
    cores: int
    ghz: float
    macs_per_cycle: int | None
    source: str

    def to_dict(self) -> dict[str, object]:
        return {"gmacs_per_s": self.gmacs_per_s, "cores": self.cores, "ghz": self.ghz,
                "macs_per_cycle": self.macs_per_cycle, "source": self.source}


_GENERIC = {"fp32": ((32, "avx512f"), (16, "avx2"), (8, "asimd")), "bf16": ((512, "amx_bf16"), (64, "avx512_bf16")),
            "fp16": ((512, "amx_fp16"), (64, "avx512_fp16")), "int8": ((1024, "amx_int8"), (128, "avx512_vnni"),
                                                                       (64, "avx_vnni"))}


def theoretical_peak(precision: str, cores: int, cpu: CpuId | None = None,
                     cpuinfo_mhz: float | None = None) -> TheoreticalPeak:
    """cores x sustained clock x MAC/cycle of the widest unit for ``precision`` that this CPU exposes."""
    cpu = cpu or read_cpuid()
    if cpuinfo_mhz is None:
        mhz = re.search(r"cpu MHz\s*:\s*([\d.]+)", _safe_read("/proc/cpuinfo"))
        cpuinfo_mhz = float(mhz.group(1)) if mhz else None
    clk = clock(cpu, cpuinfo_mhz)
    ghz = clk.sustained_ghz
    arch = lookup(cpu)
    if arch is not None:
        hit = arch.macs_per_cycle(precision, set(cpu.flags))
        where = f"{arch.name} {arch.source}" + (f" ({arch.note})" if arch.note else "")
    else:
        generic = next(((m, f) for m, f in _GENERIC.get(precision, ()) if f in cpu.flags), None)
        hit = (generic[0], f"{generic[1]} (generic figure: CPU family {cpu.family} model {cpu.model} not in the "
                           f"table)") if generic else None
        where = "ISA flags only"
    if hit is None:
        return TheoreticalPeak(precision, None, cores, ghz, None, f"no {precision} unit exposed on this CPU ({where})")
    macs, unit = hit
    clock_kind = ("all-core" if clk.all_core_ghz else "reported" if clk.source.startswith("/proc") else "base"
                  if clk.base_ghz else "max" if clk.max_ghz else "assumed")
    return TheoreticalPeak(precision, cores * ghz * macs, cores, ghz, macs,
                           f"{cores} core{'s' if cores > 1 else ''} x {ghz:.2f} GHz {clock_kind} ({clk.source}) x {macs} MAC/cycle "
                           f"({unit}; {where})")


def _safe_read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""
