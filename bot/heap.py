"""The cyclic garbage collector in a long-running server.

Python's collector walks every tracked object of the generation it collects, and its oldest
generation holds everything a server loads at start-up: the modules of FastAPI, the platform
SDKs, the openai client, SQLAlchemy, the models' Python side. In `knowbot serve` that is about
350,000 objects, and each full collection of them stops every thread (it holds the GIL) for
100-260 ms on these machines: a webhook arriving then waits that long for its acknowledgement.
None of those objects becomes garbage while the server runs, so once it has started they are
moved out of the collector's reach (`gc.freeze`); the collector still finds cycles among
everything made afterwards, and full collections then walk only that.

Only the server's own process does this (`knowbot serve`): a process that starts many apps,
such as the test suite, would keep whatever it froze for good.
"""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger(__name__)


def freeze_startup_objects() -> int:
    """Collect once, then keep everything alive now out of later collections; how many."""
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("start-up heap frozen: %d objects kept out of garbage collection (%.0f ms)",
             frozen, (time.perf_counter() - started) * 1000)
    return frozen
