"""Running an aiohttp application on uvloop until SIGINT or SIGTERM."""

import argparse
import asyncio
import logging
import signal
import ssl
import sys
from typing import Final

import uvloop
from aiohttp import web

from cachenet.errors import BadInput

__all__ = ("SHUTDOWN_GRACE_S", "run_app", "tls_context")
log = logging.getLogger(__name__)

# On SIGTERM: stop accepting, give in-flight responses this long, then cut them and exit
# (with clean-up, well within the 10 s a supervisor waits; issue 14).
SHUTDOWN_GRACE_S: Final = 4.0


def tls_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The server TLS context the command line asks for, or None for plain HTTP."""
    cert, key = getattr(args, "tls_cert", None), getattr(args, "tls_key", None)
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise BadInput("give both --tls-cert and --tls-key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        raise BadInput(f"cannot load the TLS certificate/key: {e}") from None
    return context


def run_app(app: web.Application, *, host: str, port: int, name: str, ssl_context: ssl.SSLContext | None = None) -> int:
    """Serve `app` on host:port with uvloop; returns 0 after SIGINT/SIGTERM, cleaning up first."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_serve(app, host, port, name, ssl_context))
    return 0


async def _serve(app: web.Application, host: str, port: int, name: str, ssl_context: ssl.SSLContext | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=logging.getLogger("aiohttp.access"),
        shutdown_timeout=SHUTDOWN_GRACE_S,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True, ssl_context=ssl_context)
    await site.start()
    scheme = "https" if ssl_context else "http"
    print(f"cachenet {name} listening on {scheme}://{host}:{port}", file=sys.stderr, flush=True)
    try:
        await stop.wait()
    finally:
        log.info("%s shutting down", name)
        await runner.cleanup()
