"""Small real servers that misbehave on purpose (external or hostile parties, not our components)."""

from aiohttp import web

__all__ = ("lying_peer_app",)


def lying_peer_app(truth_url: str) -> web.Application:
    """A 'peer' that claims to hold every block and serves it with one byte flipped."""
    import aiohttp

    async def block(request: web.Request) -> web.Response:
        async with aiohttp.ClientSession() as s, s.get(f"{truth_url}/v1/blocks/{request.match_info['id']}") as r:
            if r.status != 200:
                return web.Response(status=r.status)
            body = bytearray(await r.read())
            headers = {k: v for k, v in r.headers.items() if k.lower().startswith("x-block")}
        body[len(body) // 2] ^= 0xFF
        return web.Response(body=bytes(body), headers=headers)

    app = web.Application()
    app.router.add_get("/v1/blocks/{id}", block)
    return app
