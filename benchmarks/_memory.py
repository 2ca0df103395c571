"""Peak memory of a call, for the benchmarks: how far RSS rises above its level before the call (Linux)."""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Callable


def rss_mib() -> float:
    """The process's resident set size now, in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_growth_mib(fn: Callable[[], object], interval_s: float = 0.0002) -> float:
    """Run ``fn()`` while a thread samples RSS every ``interval_s``; return the peak rise above the level before."""
    gc.collect()
    before = rss_mib()
    peak = [before]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_mib())
            time.sleep(interval_s)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        fn()
    finally:
        done.set()
        thread.join()
    return max(peak[0], rss_mib()) - before
