"""Class 6 of issue 14 (the parts done): file names a download cannot carry are refused at
publish, and Content-Disposition is encoded (RFC 6266 `filename*`).

Names with control characters (DEL, C1) or line separators were accepted at publish, and
every download of such a file was a 500 (a header cannot carry them). Non-ASCII names were
sent raw inside `filename="..."`.
"""

from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from cachenet.errors import InvalidName
from registry.publish import HttpTarget, publish_path
from tests.conftest import OPERATOR_TOKEN


@pytest.mark.parametrize("bad", ["del\x7fname.bin", "c1\x85name.bin", "line\u2028sep.bin", "csi\x9b.bin"])
async def test_a_file_name_with_control_characters_is_refused_at_publish(
    origin_server: TestServer, tmp_path: Path, bad: str
) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / bad).write_bytes(b"x" * 100)
    target = HttpTarget(str(origin_server.make_url("")).rstrip("/"), OPERATOR_TOKEN)
    try:
        with pytest.raises(InvalidName):
            await publish_path(folder, name="hostile/names", target=target, progress=False)
    finally:
        await target.close()


async def test_content_disposition_carries_the_exact_name_encoded(origin_server: TestServer, tmp_path: Path) -> None:
    name = "poids é v2 100%.bin"
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / name).write_bytes(b"y" * 100)
    url = str(origin_server.make_url("")).rstrip("/")
    target = HttpTarget(url, OPERATOR_TOKEN)
    try:
        await publish_path(folder, name="hostile/names", target=target, progress=False)
    finally:
        await target.close()
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"{url}/hostile/names/resolve/main/{quote(name)}") as resp,
    ):
        assert resp.status == 200
        assert await resp.read() == b"y" * 100
        disposition = resp.headers["Content-Disposition"]
    assert disposition.isascii()
    assert f"filename*=UTF-8''{quote(name, safe='')}" in disposition
    assert 'filename="poids _ v2 100_.bin"' in disposition
