"""Running an aiohttp application on uvloop until SIGINT or SIGTERM."""

import asyncio
import logging
import signal
import sys

import uvloop
from aiohttp import web

__all__ = ("run_app",)
log = logging.getLogger(__name__)


def run_app(app: web.Application, *, host: str, port: int, name: str) -> int:
    """Serve `app` on host:port with uvloop; returns 0 after SIGINT/SIGTERM, cleaning up first."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_serve(app, host, port, name))
    return 0


async def _serve(app: web.Application, host: str, port: int, name: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(app, handle_signals=False, access_log=logging.getLogger("aiohttp.access"))
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    print(f"cachenet {name} listening on http://{host}:{port}", file=sys.stderr, flush=True)
    try:
        await stop.wait()
    finally:
        log.info("%s shutting down", name)
        await runner.cleanup()
