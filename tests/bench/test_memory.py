"""Per-case peak memory: the heap a previous case freed is handed back before the next case is measured."""

from __future__ import annotations

import gc

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
    earlier = bytearray(400 * 2**20)  # zero-filled pages: resident once touched
    earlier[:: 4096] = b"x" * len(earlier[:: 4096])
    del earlier
    with PeakRssSampler() as rss:
        spike = bytearray(200 * 2**20)
        spike[:: 4096] = b"x" * len(spike[:: 4096])
        del spike
    assert not rss.sampled
    assert 150 * 2**20 < rss.peak - rss.baseline < 300 * 2**20
