"""Gives the heap a burst freed back to the kernel.

glibc keeps freed memory in its arenas for reuse and returns little of it by itself: after a burst of
connections (many calls at once, or a client's oversized metadata, docs/upstream/) is gone, the process
kept its peak size (bench/RESULTS.md, "Metadata before the SETTINGS acknowledgement"), which is what a
pod's memory limit and the autoscaler see. `HeapTrimmer` asks glibc (mallinfo2) from a thread of its own
how much freed memory the arenas hold and calls `malloc_trim` when enough has piled up;
where the C library has neither (musl), it does nothing and says so once.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time

from prometheus_client import Counter

RETURNED = Counter("process_heap_returned_bytes", "Freed heap returned to the kernel by malloc_trim.")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def resident_bytes() -> int:
    """This process's resident set size."""
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * _PAGE


class _MallInfo2(ctypes.Structure):
    _FIELDS = (
        "arena",
        "ordblks",
        "smblks",
        "hblks",
        "hblkhd",
        "usmblks",
        "fsmblks",
        "uordblks",
        "fordblks",
        "keepcost",
    )
    _fields_ = [(name, ctypes.c_size_t) for name in _FIELDS]


class HeapTrimmer:
    def __init__(self, logger: logging.Logger, interval: float = 2.0, threshold: int = 32 * 2**20) -> None:
        """Checks every `interval` seconds; trims once `threshold` bytes were freed since the last trim, or
        the resident size has grown by as much while the arenas hold as much free."""
        self.logger, self.interval, self.threshold = logger, interval, threshold
        libc = ctypes.CDLL(None)
        self.available = hasattr(libc, "mallinfo2") and hasattr(libc, "malloc_trim")
        if self.available:
            self._mallinfo2, self._malloc_trim = libc.mallinfo2, libc.malloc_trim
            self._mallinfo2.restype = _MallInfo2
        self._lowest_free = self._lowest_resident = 0

    def start(self) -> None:
        if not self.available:
            self.logger.info("no mallinfo2/malloc_trim in this C library: freed heap stays with the process")
            return
        self._lowest_free, self._lowest_resident = self._free_in_arenas(), resident_bytes()
        threading.Thread(target=self._watch, name="heap-trimmer", daemon=True).start()

    def _free_in_arenas(self) -> int:
        return int(self._mallinfo2().fordblks)

    def _watch(self) -> None:
        while True:
            time.sleep(self.interval)
            self.check()

    def check(self) -> int:
        """Trims if enough freed heap has piled up; returns the resident bytes given back."""
        free, resident = self._free_in_arenas(), resident_bytes()
        self._lowest_free = min(self._lowest_free, free)
        self._lowest_resident = min(self._lowest_resident, resident)
        # Freed since the last look, or reused and freed again between two looks (the free total then
        # barely moves, but the resident size has grown).
        freed = free - self._lowest_free >= self.threshold
        regrown = resident - self._lowest_resident >= self.threshold and free >= self.threshold
        if not (freed or regrown):
            return 0
        began = time.perf_counter()
        self._malloc_trim(0)
        took = time.perf_counter() - began
        after = resident_bytes()
        # Trimmed pages stay free chunks in the arenas: the next trim waits for more to be freed.
        self._lowest_free, self._lowest_resident = self._free_in_arenas(), after
        returned = max(resident - after, 0)
        RETURNED.inc(returned)
        self.logger.log(
            logging.INFO if returned else logging.DEBUG,
            "returned %d MiB of freed heap to the kernel in %.0f ms (resident: %d MiB)",
            returned // 2**20,
            took * 1000,
            after // 2**20,
        )
        return returned


_trimming_in = 0  # the pid whose trimmer runs: a forked child starts its own


def trim_heap_in_background(logger: logging.Logger) -> None:
    """Starts this process's HeapTrimmer, once however many servers it runs."""
    global _trimming_in
    if _trimming_in != os.getpid():
        _trimming_in = os.getpid()
        HeapTrimmer(logger).start()
