"""The scrubber: re-verify every stored block at a bounded rate, and re-fetch corrupt pinned blocks."""

import asyncio
import logging
from collections.abc import Awaitable, Callable

from cachenet.edge.admission import Admission
from cachenet.errors import BlockNotFound, CachenetError
from cachenet.manifest import BlockRef

__all__ = ("scrub_forever",)
log = logging.getLogger(__name__)


async def scrub_forever(
    admission: Admission,
    *,
    rate: float | None,
    refetch: Callable[[BlockRef], Awaitable[None]],
    pause_s: float = 10.0,
) -> None:
    """Re-verify every stored block at `rate` bytes/s (None: never); re-fetch corrupt pinned blocks."""
    if rate is None:
        return
    store = admission.store
    while True:
        for block_id in store.ids():
            if not store.has(block_id):
                continue
            size = store.size_of(block_id)
            try:
                intact = await asyncio.to_thread(store.verify, block_id)
            except BlockNotFound:
                continue  # evicted since `ids()`: the scrubber must not die of it
            admission.metrics.scrubbed_bytes.inc(size)
            if not intact:
                admission.forget_corrupt(block_id, "scrub")
                ref = admission.pins.get(block_id)
                if ref is not None:
                    try:
                        await refetch(ref)
                    except CachenetError as e:
                        log.warning("could not re-fetch pinned block %s: %s", block_id, e)
            await asyncio.sleep(size / rate)
        await asyncio.sleep(pause_s)
