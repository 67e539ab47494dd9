"""One leak check for the C stages: a workload run many times leaves every
watched object's reference count as it was and the traced heap no bigger.

A missing ``Py_DECREF`` shows as a growing count on a shared object (None,
True, an interned key, an event constant), a spare one as a shrinking
count (a crash once it reaches zero); a leaked allocation shows as heap
growth. The workload is run first so that caches, interned strings and
memoised labels are in place before anything is measured.
"""

from __future__ import annotations

import gc
import sys
import tracemalloc
from collections.abc import Callable, Iterable


def assert_no_leaks(run: Callable[[], object], watched: Iterable[object], repeats: int,
                    heap_slack: int = 64 * 1024, windows: int = 12) -> None:
    """Windows of ``repeats`` runs each until two in a row leave every count
    where it was. A reference leaked (or dropped) per run moves every window
    the same way, so it never comes to rest; warm-up does (the interpreter
    specialising the Python callbacks, caches filling), within ``windows``."""
    watched = tuple(watched)

    def window() -> list[int]:
        for _ in range(repeats):
            run()
        gc.collect()
        return [sys.getrefcount(x) for x in watched]

    run()
    prev = window()
    for _ in range(windows):
        counts = window()
        if counts == prev:
            break
        moved = {repr(x): b - a for x, a, b in zip(watched, prev, counts) if a != b}
        prev = counts
    else:
        raise AssertionError(f"reference counts still moving after {windows} windows of {repeats} runs: {moved}")
    tracemalloc.start()  # apart from the counting: tracemalloc's own objects hold references too
    try:
        before = tracemalloc.get_traced_memory()[0]
        window()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < heap_slack, grown
