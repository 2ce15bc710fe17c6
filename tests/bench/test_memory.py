"""Per-case peak memory: the heap a previous case freed is handed back before the next case is measured."""

from __future__ import annotations

import gc
import mmap

import pytest

from edgevit.bench.memory import current_rss_bytes, release_freed_memory


def test_freed_heap_goes_back_to_the_os_before_a_case() -> None:
    if not release_freed_memory():
        pytest.skip("no glibc malloc_trim on this platform")
    blocks = [bytearray(64 * 1024) for _ in range(3000)]  # ~190 MB of blocks below glibc's mmap threshold
    pin = bytearray(64 * 1024)  # allocated last: the heap's top stays in use, so free() alone cannot shrink it
    del blocks
    gc.collect()
    held = current_rss_bytes()
    release_freed_memory()
    assert held - current_rss_bytes() > 100 * 2**20, "freed heap still resident"
    del pin


def test_a_short_spike_inside_a_case_is_its_peak() -> None:
    """The peak is the kernel's high-water mark, reset when the case starts: a 200 MB block that lives for
    microseconds counts (a 5 ms sampler would miss it), and an earlier, larger peak of the process does not."""
    from edgevit.bench.memory import PeakRssSampler, reset_peak_rss

    if not reset_peak_rss():
        pytest.skip("this kernel does not let a process reset its RSS high-water mark")
    earlier = _touched_anonymous_map(400 * 2**20)
    earlier.close()
    with PeakRssSampler() as rss:
        _touched_anonymous_map(200 * 2**20).close()
    assert not rss.sampled
    assert 150 * 2**20 < rss.peak - rss.baseline < 300 * 2**20


def _touched_anonymous_map(size: int) -> mmap.mmap:
    """``size`` bytes of fresh anonymous pages, each written once so it is resident.

    Why not a ``bytearray``: the allocator may hand back memory an earlier test freed but kept resident
    (CI, 2026-12-05: a 200 MB bytearray raised the peak by 94 kB in an xdist worker at 1.6 GB RSS), so the
    spike would be real in Python and invisible to the kernel. ``mmap`` asks the kernel directly, and
    ``close`` unmaps the pages.
    """
    block = mmap.mmap(-1, size)
    for offset in range(0, size, mmap.PAGESIZE):
        block[offset] = 1
    return block
