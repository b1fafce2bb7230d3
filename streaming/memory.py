"""The C heap of a long-running flow process (glibc), kept from creeping up.

Python hands allocations larger than 512 bytes to ``malloc``. glibc serves large
ones with ``mmap`` and returns them on free, but after the first such free it raises
its threshold to that size (up to 32 MB), so later buffers of that size (an archive
bucket's entries, a multi-MB snapshot every few seconds) come from the heap, and the
fragments left between them make the resident size creep (``bench/soak.py`` measured
+186 MB/h for the archive flow). :func:`fix_mmap_threshold` pins the threshold;
:func:`release_free_memory` gives free heap pages back after a large write.
No-ops where the C library is not glibc.

:func:`tune_gc` sets the cyclic garbage collector for a flow's batches: a 10,000-entry
batch makes some 30,000 container objects that die young, which with CPython's default
thresholds (700, 10, 10) meant about 2,000 collections per 500,000 entries, a full one
every 35,000 entries walking every object of the process: 15% of the candles flow's
time in the bench (``gc.callbacks``). After :func:`tune_gc`: under 60 collections, and
none of the oldest generation, for 4% of that time.
"""

from __future__ import annotations

import ctypes
import gc
from typing import Any

#: Allocations from this size on are mapped and unmapped on their own.
MMAP_THRESHOLD = 256 * 1024
_M_MMAP_THRESHOLD = -3  # mallopt parameter, glibc's malloc.h


def _libc() -> Any:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim, libc.mallopt  # noqa: B018 (both must exist: glibc)
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()


def fix_mmap_threshold(size: int = MMAP_THRESHOLD) -> bool:
    """Serve allocations of ``size`` bytes or more by ``mmap``, always; True if set."""
    return _LIBC is not None and bool(_LIBC.mallopt(_M_MMAP_THRESHOLD, size))


def release_free_memory() -> None:
    """Give the heap's free pages back to the system (``malloc_trim``); a few ms."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


#: Young-generation threshold: about a third of a full batch's container objects.
GC_THRESHOLD_0 = 10_000


def tune_gc() -> None:
    """Freeze what the process holds now and collect the young generation less often.

    Called once the flow's modules are imported: ``gc.freeze`` moves every object so
    far to a permanent generation that collections never walk again, and a higher
    threshold runs a collection per several thousand new containers instead of per 700.
    Reference counting still frees everything that is not in a cycle at once; cycles
    (rare in the flows' code) wait a little longer.
    """
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD_0, 50, 100)
