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
