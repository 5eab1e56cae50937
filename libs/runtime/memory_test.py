"""HeapTrimmer gives back what a burst freed, also when the burst reused memory an earlier trim gave back,
and does not trim again when nothing more was freed."""

from __future__ import annotations

import logging

from libs.runtime.memory import HeapTrimmer, resident_bytes

MIB = 2**20


def burst(mib: int) -> bytearray:
    """Allocates `mib` MiB in blocks small enough for the arenas (not mmap), then frees them but for one
    allocated last, which it returns: held, it keeps glibc from giving the heap's top back by itself,
    as a long-lived allocation made during a burst of calls does."""
    blocks = [bytearray(4000) for _ in range(mib * MIB // 4000)]
    last = bytearray(4000)
    del blocks
    return last


def test_a_freed_burst_is_returned_once() -> None:
    trimmer = HeapTrimmer(logging.getLogger("test"))
    assert trimmer.available  # glibc
    trimmer.start()
    assert trimmer.check() == 0  # nothing freed yet
    start = resident_bytes()
    held = burst(200)
    assert resident_bytes() > start + 150 * MIB  # glibc kept it
    assert trimmer.check() > 150 * MIB
    assert resident_bytes() < start + 32 * MIB
    assert trimmer.check() == 0
    del held


def test_a_burst_that_reused_trimmed_memory_between_two_looks_is_returned() -> None:
    trimmer = HeapTrimmer(logging.getLogger("test"))
    trimmer.start()
    held = [burst(200)]
    assert trimmer.check() > 150 * MIB
    held.append(burst(200))  # reuses the free chunks the trim left (their total barely moves), faulting pages back in
    assert trimmer.check() > 150 * MIB
