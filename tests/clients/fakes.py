"""Misbehaving block servers for the client tests (hostile or broken parties)."""

import asyncio
from typing import Final

import aiohttp
from aiohttp import web

__all__ = ("flipped_key", "flipping_source_app", "stalling_source_app")

flipped_key: Final = web.AppKey("flipped", dict)
_PASS_HEADERS: Final = (
    "content-length",
    "x-block-blake3",
    "etag",
    "content-range",
    "accept-ranges",
)


def flipping_source_app(truth_url: str, *, every: int = 2) -> web.Application:
    """A source that serves every `every`-th block it is asked for with one byte flipped."""
    counter = {"n": 0, "flipped": 0}

    async def block(request: web.Request) -> web.StreamResponse:
        counter["n"] += 1
        flip = counter["n"] % every == 1 % every
        headers = {"Range": request.headers["Range"]} if "Range" in request.headers else {}
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"{truth_url}/v1/blocks/{request.match_info['id']}", headers=headers) as r,
        ):
            body = bytearray(await r.read())
            out = {k: v for k, v in r.headers.items() if k.lower() in _PASS_HEADERS}
            status = r.status
        if flip and status in (200, 206) and body:
            body[len(body) // 2] ^= 0xFF
            counter["flipped"] += 1
        return web.Response(status=status, body=bytes(body), headers=out)

    app = web.Application()
    app[flipped_key] = counter
    app.router.add_get("/v1/blocks/{id}", block)
    return app


def stalling_source_app(truth_url: str, *, stall_s: float = 30.0) -> web.Application:
    """A source that sends the first half of each block, then goes silent."""

    async def block(request: web.Request) -> web.StreamResponse:
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"{truth_url}/v1/blocks/{request.match_info['id']}") as r,
        ):
            body = await r.read()
            blake3 = r.headers.get("X-Block-Blake3", "")
        resp = web.StreamResponse(headers={"X-Block-Blake3": blake3})
        resp.content_length = len(body)
        await resp.prepare(request)
        await resp.write(body[: len(body) // 2])
        await asyncio.sleep(stall_s)
        return resp

    app = web.Application()
    app.router.add_get("/v1/blocks/{id}", block)
    return app
