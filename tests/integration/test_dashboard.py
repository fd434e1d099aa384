"""The operator dashboard in headless Chromium: nodes, recompute from the page, a node down."""

import asyncio
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import aiohttp
import numpy as np
import pytest
from aiohttp.test_utils import TestServer
from safetensors.numpy import save_file

from placement.app import create_app as create_controller_app
from placement.config import ControllerSettings
from registry.publish import HttpTarget, publish_path
from tests.conftest import OPERATOR_TOKEN

TOPOLOGY: Final = Path(__file__).parents[2] / "deploy" / "topologies" / "demo.yaml"
CHROMIUM: Final = Path("/usr/bin/chromium")
CHROMEDRIVER: Final = Path("/usr/bin/chromedriver")
WAIT_S: Final = 15.0


def _url(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


def _require_browser() -> None:
    """Skip without Chromium, chromedriver or selenium locally; fail in CI, which installs them."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    if missing:
        reason = f"the dashboard test needs {', '.join(missing)}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


def _tiny_models(root: Path) -> dict[str, Path]:
    """Two models sharing a small backbone (three tensors) plus one of their own, ~1.3 MB in all."""
    rng = np.random.default_rng(0)
    backbone = {f"layer.{i}.weight": rng.standard_normal((128, 256), dtype=np.float32) for i in range(3)}
    out = {}
    for name in ("tiny-a", "tiny-b"):
        folder = root / name
        folder.mkdir(parents=True)
        head = {"head.weight": rng.standard_normal((64, 256), dtype=np.float32)}
        save_file({**backbone, **head}, str(folder / "model.safetensors"), metadata={"format": "pt"})
        (folder / "config.json").write_text(json.dumps({"model_type": "tiny", "name": name}))
        out[f"org/{name}"] = folder
    return out


async def test_dashboard_shows_the_nodes_and_recomputes_from_the_page(
    origin_server: TestServer,
    edge_factory: Callable[..., Any],
    aiohttp_server: Callable[..., Any],
    tmp_path: Path,
) -> None:
    _require_browser()
    target = HttpTarget(_url(origin_server), OPERATOR_TOKEN)
    for name, folder in _tiny_models(tmp_path / "models").items():
        await publish_path(folder, name=name, target=target, progress=False)
    await target.close()
    edges = {
        f"edge-{i}": await edge_factory(origin=origin_server, node_id=f"edge-{i}", capacity_bytes=64_000_000)
        for i in (1, 2, 3)
    }
    settings = ControllerSettings(
        topology=TOPOLOGY,
        origin_url=_url(origin_server),
        data_dir=tmp_path / "controller",
        nodes=tuple(f"{k}={_url(v)}" for k, v in edges.items()),
        token=OPERATOR_TOKEN,
    )
    controller = await aiohttp_server(create_controller_app(settings))
    async with aiohttp.ClientSession() as s:
        for edge, model in (
            ("edge-1", "org/tiny-a"),
            ("edge-2", "org/tiny-b"),
        ):  # misses the page must count
            async with s.get(f"{_url(edges[edge])}/v1/models/{model}/revisions/main/files/config.json") as resp:
                assert resp.status == 200
        async with s.get(f"{_url(controller)}/dashboard") as resp:
            assert resp.status == 200 and resp.content_type == "text/html"
        async with s.get(f"{_url(controller)}/openapi.json") as resp:
            assert {"/", "/dashboard", "/v1/cluster", "/v1/simulation"} <= set((await resp.json())["paths"])

    browser = await asyncio.to_thread(_Browser, tmp_path)
    try:
        page = await asyncio.to_thread(browser.recompute_from_the_page, f"{_url(controller)}/", tmp_path)
        assert page["nodes"] == ["edge-1", "edge-2", "edge-3"]
        assert page["misses_edge_1"] >= 1
        assert page["run_text"].startswith("#1")
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{_url(controller)}/v1/runs") as resp:
                run = (await resp.json())["runs"][0]
        assert run["run_id"] == 1
        assert abs(page["hit_ratio"] - run["hit_ratio"]) < 6e-4
        assert page["simulation_curves"] == ["independent", "trimcaching-gen", "trimcaching-ls"]

        await edges["edge-3"].close()
        banner = await asyncio.to_thread(browser.wait_for_banner, "edge-3", tmp_path / "node-down.png")
        assert "node edge-3 is down" in banner
    finally:
        await asyncio.to_thread(browser.quit)


class _Browser:
    """A headless Chromium driven by selenium (blocking: call it through asyncio.to_thread)."""

    def __init__(self, tmp_path: Path) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for arg in (
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--window-size=1400,2000",
            f"--user-data-dir={tmp_path / 'chromium'}",
        ):
            options.add_argument(arg)
        self.driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))

    def recompute_from_the_page(self, url: str, tmp_path: Path) -> dict[str, Any]:
        """Load the page, read the nodes, recompute with the token, read run #1, screenshot."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        d = self.driver
        wait = WebDriverWait(d, WAIT_S)
        d.get(url)
        # The page redraws every few seconds: read it by script, never through stale elements.
        wait.until(lambda drv: self._text("#node-edge-3"))
        nodes = d.execute_script("return [...document.querySelectorAll('.node')].map((e) => e.id.slice(5));")
        wait.until(lambda drv: self._text("#node-edge-1 .misses") not in ("", "0"))
        misses = int(self._text("#node-edge-1 .misses"))

        d.find_element(By.ID, "token").send_keys(OPERATOR_TOKEN)
        d.find_element(By.ID, "recompute").click()
        wait.until(lambda drv: "Run #1" in self._text("#recompute-result"))
        wait.until(lambda drv: self._text("#run-1"))
        run_text, hit_ratio = self._text("#run-1"), float(self._text("#run-1 .hit-ratio"))
        wait.until(
            lambda drv: (
                d.execute_script("return document.querySelectorAll('#sim-chart path[data-solver]').length;") == 3
            )
        )
        wait.until(lambda drv: "complete" in self._text("#models"))
        curves = d.execute_script(
            "return [...document.querySelectorAll('#sim-chart path[data-solver]')].map((p) => p.dataset.solver);"
        )
        d.save_screenshot(str(tmp_path / "dashboard.png"))
        return {
            "nodes": nodes,
            "misses_edge_1": misses,
            "run_text": run_text,
            "hit_ratio": hit_ratio,
            "simulation_curves": sorted(curves),
        }

    def wait_for_banner(self, node_id: str, screenshot: Path) -> str:
        """The error banner's text once it names `node_id` (and a screenshot of the page then)."""
        from selenium.webdriver.support.ui import WebDriverWait

        pattern = re.compile(rf"node {re.escape(node_id)} is down")
        WebDriverWait(self.driver, WAIT_S).until(lambda drv: pattern.search(self._text("#banner")) is not None)
        self.driver.save_screenshot(str(screenshot))
        return self._text("#banner")

    def _text(self, selector: str) -> str:
        """The rendered text of the first element matching `selector` ("" when there is none)."""
        text = self.driver.execute_script(
            "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';", selector
        )
        return str(text or "")

    def quit(self) -> None:
        """Close the browser."""
        self.driver.quit()
