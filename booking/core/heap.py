"""The worker's garbage collector, told what lives as long as the process.

CPython collects every generation once enough young collections have passed, and a full
collection walks every tracked object of the process, the app's routes, templates, libraries
and caches included (about 120,000 in a worker), while the worker's event loop waits.
`loadtest/capacity/gcprobe.py` measured one every ~2,000 answers on release night, ~90 ms of
CPU each: 13 % of a worker's CPU and most of `booking bench`'s latency tail (every request the
worker held waited the pause out). What exists once start-up is over stays until the process
ends, so `gc.freeze()` takes it out of the collector's sight: a full collection then walks only
what was made since, and cycles among the frozen objects are simply never freed (there are none
to free: they live as long as the process anyway).
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> int:
    """Collect once, then freeze everything that survived; returns how many objects were
    frozen. Call it when a worker is ready to serve, after its app and stores are built."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
