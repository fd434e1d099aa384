"""Crash recovery: the origin and an edge node killed with SIGKILL at seeded random moments.

Three scenarios, each run `kills` times against one data folder that survives every kill:

- `publish`: a `cachenet publish ... --origin` subprocess uploads a model (random safetensors
  sharing some tensors with the others, or a LoRA adapter of the real model) while the
  `origin serve` subprocess is killed (and, one time in four, the publisher with it).
- `plan`: an edge node is sent a placement plan of ~150 blocks (`PUT /v1/node/plan`) and is
  killed while it fetches them; capacity is tight, so it also evicts the previous plan's blocks.
- `fetch`: a dozen device threads pull a model's files and blocks through an edge node,
  which is killed mid-transfer; every response completed before the kill must be byte-identical.

After every restart on the same folder: no temporary file survives the restart's scan, every
block verifies (`BlockStore.check`), the catalogue references no missing block and every
refcount is right (`Catalogue.check`), every acknowledged publish (exit 0 and its revision
printed before the kill) resolves and all its files download byte-identical, and an
acknowledged plan is pinned and complete again. Servers run as `python -m cachenet ...`
(the `cachenet` script; it imports only the command's own modules).

    python -m bench.reliability_crash [--kills 50] [--seed 1] [--scenarios publish,plan,fetch]
"""

import argparse
import asyncio
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from http.client import HTTPException
from pathlib import Path
from typing import Any, Final

import numpy as np
from safetensors.numpy import save_file

from bench.machine import write_result
from bench.processes import free_port
from cachenet.blockid import digest_of
from cachenet.blockstore import BlockStore
from cachenet.manifest import ModelManifest
from cluster.demomodels import REAL_MODEL_NAME, make_lora_adapter, real_model_dir
from registry.catalogue import Catalogue, sqlite_url
from registry.chunking import list_folder_files
from registry.publish import HttpTarget, publish_path

__all__ = (
    "SCENARIOS",
    "ScenarioResult",
    "Server",
    "http",
    "run_fetch_crashes",
    "run_plan_crashes",
    "run_publish_crashes",
    "write_random_model",
)

TOKEN: Final = "crash-test-token"
REPO_ROOT: Final = Path(__file__).resolve().parent.parent
SCENARIOS: Final = ("publish", "plan", "fetch")
START_TIMEOUT_S: Final = 60.0
SETTLE_TIMEOUT_S: Final = 60.0
HTTP_TIMEOUT_S: Final = 30.0
SHARED_TENSORS: Final = 8
DEVICE_THREADS: Final = 12
DEVICE_REQUESTS_MAX: Final = 200
_PUBLISHED_RE: Final = re.compile(r"^published (\S+)@(\S+) = ([0-9a-f]{40}):", re.M)


@dataclass
class ScenarioResult:
    """What one scenario survived: kills, restarts whose every check passed, and what was lost."""

    scenario: str
    kills: int = 0
    survived: int = 0
    acknowledged: int = 0
    lost_blocks: int = 0
    corrupt_blocks: int = 0
    orphan_temp_files: int = 0
    wrong_refcounts: int = 0
    incomplete_acknowledged: int = 0
    corrupt_responses: int = 0
    interrupted_requests: int = 0
    completed_requests: int = 0
    retried_after_recovery: int = 0
    kill_delays_s: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def damage(self) -> int:
        """Lost or corrupt things of any kind (must be 0)."""
        return (
            self.lost_blocks
            + self.corrupt_blocks
            + self.orphan_temp_files
            + self.wrong_refcounts
            + self.incomplete_acknowledged
            + self.corrupt_responses
        )

    def to_json(self) -> dict[str, Any]:
        """The result as JSON (the kill moments rounded to ms)."""
        doc = asdict(self)
        doc["kill_delays_s"] = [round(d, 3) for d in self.kill_delays_s]
        doc["damage"] = self.damage
        doc["problems"] = self.problems[:50]
        return doc


class Server:
    """A `cachenet` server subprocess that can be SIGKILLed and restarted on the same folder."""

    def __init__(self, args: list[str], *, port: int, log_path: Path) -> None:
        self.args, self.port, self.log_path = args, port, log_path
        self.url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def origin(cls, work: Path) -> "Server":
        """An origin on a free port, its data in `work/origin`, its log in `work/logs`."""
        port = free_port()
        argv = ["origin", "serve", "--data", str(work / "origin"), "--port", str(port), "--token", TOKEN]
        return cls(argv, port=port, log_path=work / "logs" / "origin.log")

    @classmethod
    def edge(cls, work: Path, *, node_id: str, capacity: str, origin_url: str) -> "Server":
        """An edge node on a free port, its data in `work/edge`, its log in `work/logs`."""
        port = free_port()
        argv = [
            "edge",
            "serve",
            "--node-id",
            node_id,
            "--data",
            str(work / "edge"),
            "--capacity",
            capacity,
            "--origin",
            origin_url,
            "--token",
            TOKEN,
            "--port",
            str(port),
        ]
        return cls(argv, port=port, log_path=work / "logs" / "edge.log")

    @property
    def pid(self) -> int:
        """The server process's id."""
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        """Start the process and wait (bounded) until /healthz answers."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                launcher(*self.args),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=REPO_ROOT,
                env=_child_env(),
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"cachenet {self.args[0]} exited with {self.process.returncode}:\n{tail}")
            try:
                if http("GET", self.url + "/healthz", timeout=1)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.03)
        raise RuntimeError(f"cachenet {self.args[0]} on port {self.port} not healthy within {START_TIMEOUT_S:.0f} s")

    def kill(self) -> None:
        """SIGKILL the process (no clean-up runs) and reap it."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()


def launcher(*args: str) -> list[str]:
    """argv running one `cachenet` command (it imports only that command's modules)."""
    return [sys.executable, "-m", "cachenet", *args]


def http(
    method: str,
    url: str,
    *,
    body: bytes | None = None,
    token: str | None = None,
    timeout: float = HTTP_TIMEOUT_S,
) -> tuple[int, bytes]:
    """(status, body) of one request; HTTP errors are returned, not raised."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if body is not None:
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def write_random_model(folder: Path, *, seed: int, tensors: int = 120, files: int = 1, max_elems: int = 16384) -> Path:
    """A Hugging Face-like folder: config.json and safetensors files of random float32 tensors.

    The first `SHARED_TENSORS` tensors are the same in every model (seed 0), so models share
    blocks and refcounts above 1 get exercised.
    """
    folder.mkdir(parents=True, exist_ok=True)
    shared_rng, rng = np.random.default_rng(0), np.random.default_rng(seed + 1)
    shared = {
        f"shared.{k}": shared_rng.standard_normal(1024 + 512 * k, dtype=np.float32) for k in range(SHARED_TENSORS)
    }
    per_file = max(1, tensors // files)
    for f in range(files):
        part: dict[str, np.ndarray] = dict(shared) if f == 0 else {}
        for k in range(per_file):
            size = int(rng.integers(256, max_elems))
            part[f"layer.{f}.{k}.weight"] = rng.standard_normal(size, dtype=np.float32)
        name = "model.safetensors" if files == 1 else f"model-{f + 1:05d}-of-{files:05d}.safetensors"
        save_file(part, str(folder / name), metadata={"format": "np"})
    (folder / "config.json").write_text(json.dumps({"model_type": "random", "seed": seed}))
    return folder


# -- scenario: the origin killed during publishes ----------------------------------------------


def run_publish_crashes(work: Path, *, kills: int, seed: int) -> ScenarioResult:
    """Kill the origin (sometimes the publisher too) at random moments during `cachenet publish`."""
    result, rng, began = ScenarioResult("publish"), random.Random(seed), time.monotonic()
    data = work / "origin"
    origin = Server.origin(work)
    acked: dict[str, tuple[str, dict[str, str]]] = {}
    unacked: list[tuple[str, Path, bool]] = []
    try:
        origin.start()
        # Not killed: the real model (the base of the adapters) and one timing run of the publisher.
        report = asyncio.run(_publish_in_process(origin.url, real_model_dir(), REAL_MODEL_NAME, lora=False))
        acked[REAL_MODEL_NAME] = (report, _expected_files(real_model_dir()))
        calib = write_random_model(work / "models" / "calib", seed=10_000)
        t0 = time.monotonic()
        code, out, err = _run_publisher(calib, "crash/calib", origin.url, kill_after=None)
        window = time.monotonic() - t0
        if code != 0:
            raise RuntimeError(f"calibration publish failed ({code}): {err[-2000:]}")
        acked["crash/calib"] = (_published_revision(out, "crash/calib"), _expected_files(calib))
        for i in range(kills):
            lora = i % 3 == 2
            name = f"crash/m-{i:03d}"
            folder = (
                make_lora_adapter(work / "models" / name, seed=i)
                if lora
                else write_random_model(work / "models" / name, seed=i)
            )
            delay = rng.uniform(0.25 * window, 1.05 * window)
            also_publisher = rng.random() < 0.25
            result.kill_delays_s.append(delay)
            code, out, _err = _run_publisher(
                folder,
                name,
                origin.url,
                kill_after=delay,
                on_kill=lambda: origin.kill(),
                kill_publisher=also_publisher,
            )
            result.kills += 1
            if code == 0 and _PUBLISHED_RE.search(out):
                acked[name] = (_published_revision(out, name), _expected_files(folder))
                result.acknowledged += 1
            else:
                unacked.append((name, folder, lora))
            origin.start()
            if _check_origin(data, origin.url, acked, result, f"kill {i}"):
                result.survived += 1
        # The interrupted publishes go through once retried against the recovered origin.
        for name, folder, lora in unacked:
            rev = asyncio.run(_publish_in_process(origin.url, folder, name, lora=lora))
            acked[name] = (rev, _expected_files(folder))
            result.retried_after_recovery += 1
        if unacked:
            _check_origin(data, origin.url, acked, result, "after retries")
    finally:
        origin.stop()
        result.seconds = round(time.monotonic() - began, 2)
    return result


def _run_publisher(
    folder: Path,
    name: str,
    origin_url: str,
    *,
    kill_after: float | None,
    on_kill: Callable[[], None] | None = None,
    kill_publisher: bool = False,
) -> tuple[int, str, str]:
    argv = launcher(
        "publish",
        str(folder),
        "--name",
        name,
        "--origin",
        origin_url,
        "--token",
        TOKEN,
        "--no-progress",
    )
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        cwd=REPO_ROOT,
        env=_child_env(),
    )
    if kill_after is not None:
        try:
            proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            pass
        assert on_kill is not None
        on_kill()
        if kill_publisher and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def _published_revision(out: str, name: str) -> str:
    m = _PUBLISHED_RE.search(out)
    if m is None or m.group(1) != name:
        raise RuntimeError(f"publisher output does not name {name}: {out!r}")
    return m.group(3)


async def _publish_in_process(origin_url: str, folder: Path, name: str, *, lora: bool) -> str:
    target = HttpTarget(origin_url, TOKEN)
    try:
        report = await publish_path(
            folder, name=name, target=target, progress=False, base=REAL_MODEL_NAME if lora else None
        )
    finally:
        await target.close()
    return report.revision


def _expected_files(folder: Path) -> dict[str, str]:
    return {rel: hashlib.sha256(src.read_bytes()).hexdigest() for src, rel in list_folder_files(folder)}


def _check_origin(
    data: Path,
    url: str,
    acked: dict[str, tuple[str, dict[str, str]]],
    result: ScenarioResult,
    when: str,
) -> bool:
    """Every check after a restart of the origin; records what failed, True when all passed."""
    before = result.damage
    store_dir = data / "store"
    temps = [p for p in (store_dir / "blocks").glob("*/*/*") if p.name.endswith(".tmp")]
    result.orphan_temp_files += len(temps)
    store = _open_store(store_dir)
    catalogue = Catalogue(sqlite_url(data / "catalogue.sqlite"))
    try:
        report = store.check()
        crep = catalogue.check(store.has)
    finally:
        catalogue.close()
        _close_store(store)
    result.corrupt_blocks += len(report.corrupt_blocks) + len(report.size_drift)
    result.lost_blocks += len(crep.missing_blocks)
    result.wrong_refcounts += len(crep.wrong_refcounts)
    for name, (rev, files) in acked.items():
        status, body = http("GET", f"{url}/v1/models/{name}/revisions/{rev}")
        if status != 200 or ModelManifest.from_bytes(body).revision != rev:
            result.incomplete_acknowledged += 1
            result.problems.append(f"{when}: {name}@{rev} does not resolve ({status})")
            continue
        for path, sha in files.items():
            status, got = http("GET", f"{url}/v1/models/{name}/revisions/{rev}/files/{path}")
            if status != 200 or hashlib.sha256(got).hexdigest() != sha:
                result.incomplete_acknowledged += 1
                result.problems.append(f"{when}: {name}@{rev}/{path} answered {status}, not the bytes published")
    if temps or not report.ok or not crep.ok:
        result.problems.append(f"{when}: temps={len(temps)} store={report} catalogue={crep}")
    return result.damage == before


# -- the edge scenarios ------------------------------------------------------------------------


@dataclass
class _EdgeRig:
    origin: Server
    edge: Server
    data: Path
    models: dict[str, ModelManifest]
    folders: dict[str, Path]


def _start_rig(work: Path, *, models: int, capacity_models: float, name_prefix: str) -> _EdgeRig:
    origin = Server.origin(work)
    origin.start()
    folders = {
        f"{name_prefix}/m-{i:03d}": write_random_model(work / "models" / f"m-{i:03d}", seed=20_000 + i, files=2)
        for i in range(models)
    }

    async def publish_all() -> dict[str, ModelManifest]:
        target = HttpTarget(origin.url, TOKEN)
        out = {}
        try:
            for name, folder in folders.items():
                await publish_path(folder, name=name, target=target, progress=False)
                out[name] = ModelManifest.from_json(json.loads(await _get_text(origin.url, name)))
        finally:
            await target.close()
        return out

    manifests = asyncio.run(publish_all())
    biggest = max(sum(r.size for r in m.unique_blocks().values()) for m in manifests.values())
    capacity = int(biggest * capacity_models)
    data = work / "edge"
    edge = Server.edge(work, node_id="crash-edge", capacity=str(capacity), origin_url=origin.url)
    edge.start()
    return _EdgeRig(origin, edge, data, manifests, folders)


async def _get_text(url: str, name: str) -> str:
    return (await asyncio.to_thread(http, "GET", f"{url}/v1/models/{name}/revisions/main"))[1].decode()


def _check_edge_store(data: Path, result: ScenarioResult, when: str, pid: int | None = None) -> bool:
    before = result.damage
    store_dir = data / "store"
    temps = [p for p in (store_dir / "blocks").glob("*/*/*") if p.name.endswith(".tmp")]
    result.orphan_temp_files += len(temps)
    store = _open_store(store_dir)
    try:
        report = store.check()
    finally:
        _close_store(store)
    result.corrupt_blocks += len(report.corrupt_blocks) + len(report.size_drift)
    if temps or not report.ok:
        stats = [(p.name, p.stat().st_ino, p.stat().st_mtime) for p in temps if p.exists()]
        held_open = _open_temp_files(pid) if pid else []
        result.problems.append(f"{when}: temps={stats} open in the node={held_open} store={report}")
    return result.damage == before


def _open_store(store_dir: Path) -> BlockStore:
    """The server's store, opened beside the running server (which keeps it locked: our scan
    then deletes no young temporary file, so it cannot hide one the restart left behind)."""
    return BlockStore(store_dir, fsync=False)


def _close_store(store: BlockStore) -> None:
    # Release the store's lock at once: a checker still holding it would make the next
    # restart believe another writer is active, so it would keep the crash's temporary files.
    close = getattr(store, "close", None)
    if close is not None:
        close()


def _open_temp_files(pid: int) -> list[str]:
    """Temporary files the node process holds open (a write still in progress, or leaked)."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if ".tmp" in target:
            out.append(target.rsplit("/", 1)[-1])
    return out


def _plan_body(plan_id: str, manifest: ModelManifest) -> bytes:
    blocks = [[r.block_id, r.blake3, r.size] for r in manifest.unique_blocks().values()]
    return json.dumps({"plan_id": plan_id, "blocks": blocks}).encode()


def _wait_plan_held(edge: Server, plan_id: str, wanted: set[str]) -> tuple[str | None, set[str]]:
    """Poll the node until the plan is pinned and every block held; returns (plan id, missing)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    missing, current = set(wanted), None
    while time.monotonic() < deadline:
        status, body = http("GET", f"{edge.url}/v1/node/state?blocks=1")
        if status == 200:
            doc = json.loads(body)
            current = doc["plan"]["plan_id"]
            missing = wanted - set(doc["block_ids"] or [])
            if current == plan_id and not missing and doc["plan"]["state"] != "fetching":
                return current, missing
        time.sleep(0.05)
    return current, missing


def run_plan_crashes(work: Path, *, kills: int, seed: int) -> ScenarioResult:
    """Kill the edge node while it fetches a plan's blocks; restarted, it must finish the plan."""
    result, rng, began = ScenarioResult("plan"), random.Random(seed), time.monotonic()
    rig = _start_rig(work, models=kills + 1, capacity_models=2.5, name_prefix="plan")
    names = list(rig.models)
    try:
        # Timing run, not killed: how long applying one plan takes here.
        t0 = time.monotonic()
        status, _ = http(
            "PUT",
            f"{rig.edge.url}/v1/node/plan",
            body=_plan_body("calib", rig.models[names[0]]),
            token=TOKEN,
        )
        assert status == 202, status
        plan_id, missing = _wait_plan_held(rig.edge, "calib", set(rig.models[names[0]].unique_blocks()))
        window = time.monotonic() - t0
        if missing:
            raise RuntimeError(f"calibration plan did not complete: {len(missing)} blocks missing")
        acked_plan, acked_blocks = "calib", set(rig.models[names[0]].unique_blocks())
        for i in range(kills):
            manifest = rig.models[names[i + 1]]
            plan_id = f"plan-{i:03d}"
            delay = rng.uniform(0.0, 1.1 * window)
            result.kill_delays_s.append(delay)
            t0 = time.monotonic()
            status, _ = http(
                "PUT",
                f"{rig.edge.url}/v1/node/plan",
                body=_plan_body(plan_id, manifest),
                token=TOKEN,
            )
            if status == 202:
                acked_plan, acked_blocks = plan_id, set(manifest.unique_blocks())
                result.acknowledged += 1
            time.sleep(max(0.0, delay - (time.monotonic() - t0)))
            rig.edge.kill()
            result.kills += 1
            rig.edge.start()
            got_plan, missing = _wait_plan_held(rig.edge, acked_plan, acked_blocks)
            ok = _check_edge_store(rig.data, result, f"kill {i}", rig.edge.pid)
            if got_plan != acked_plan or missing:
                result.lost_blocks += len(missing) or 1
                result.problems.append(f"kill {i}: plan {got_plan} (wanted {acked_plan}), {len(missing)} missing")
                ok = False
            result.survived += ok
    finally:
        rig.edge.stop()
        rig.origin.stop()
        result.seconds = round(time.monotonic() - began, 2)
    return result


def run_fetch_crashes(work: Path, *, kills: int, seed: int) -> ScenarioResult:
    """Kill the edge node while devices pull through it; afterwards pulls are byte-identical."""
    result, rng, began = ScenarioResult("fetch"), random.Random(seed), time.monotonic()
    rig = _start_rig(work, models=kills + 1, capacity_models=3.0, name_prefix="fetch")
    names = list(rig.models)
    expected = {n: _expected_files(rig.folders[n]) for n in names}
    try:
        t0 = time.monotonic()
        _devices(rig, names[0], expected[names[0]], result, rng, stop_after=None)
        window = time.monotonic() - t0
        for i in range(kills):
            name = names[i + 1]
            delay = rng.uniform(0.05 * window, 1.0 * window)
            result.kill_delays_s.append(delay)
            _devices(rig, name, expected[name], result, rng, stop_after=delay)
            result.kills += 1
            rig.edge.start()
            ok = _check_edge_store(rig.data, result, f"kill {i}", rig.edge.pid)
            # What the devices did not get before the kill comes whole and identical now.
            for other in {name, names[rng.randrange(i + 2)]}:
                for path, sha in expected[other].items():
                    status, got = http("GET", f"{rig.edge.url}/{other}/resolve/main/{path}")
                    if status != 200 or hashlib.sha256(got).hexdigest() != sha:
                        result.lost_blocks += 1
                        result.problems.append(f"kill {i}: {other}/{path} answered {status} after the restart")
                        ok = False
            ok = _check_edge_store(rig.data, result, f"kill {i}, after the re-pull") and ok
            result.survived += ok
    finally:
        rig.edge.stop()
        rig.origin.stop()
        result.seconds = round(time.monotonic() - began, 2)
    return result


def _devices(
    rig: _EdgeRig,
    name: str,
    files: dict[str, str],
    result: ScenarioResult,
    rng: random.Random,
    *,
    stop_after: float | None,
) -> None:
    """Device threads pulling `name` (files and blocks); SIGKILL the edge after `stop_after` s."""
    manifest = rig.models[name]
    blocks = list(manifest.unique_blocks())
    stop = threading.Event()
    lock = threading.Lock()
    seeds = [rng.randrange(1 << 30) for _ in range(DEVICE_THREADS)]

    def device(k: int) -> None:
        local = random.Random(seeds[k])
        for _ in range(DEVICE_REQUESTS_MAX):
            if stop.is_set():
                return
            if local.random() < 0.5:
                path = local.choice(sorted(files))
                url, check = f"{rig.edge.url}/{name}/resolve/main/{path}", ("file", files[path])
            else:
                block_id = local.choice(blocks)
                url, check = f"{rig.edge.url}/v1/blocks/{block_id}", ("block", block_id)
            try:
                status, body = http("GET", url, timeout=HTTP_TIMEOUT_S)
            except (OSError, ValueError, HTTPException):
                with lock:
                    result.interrupted_requests += 1
                if stop_after is None:
                    raise
                return  # the node is gone: this device gives up
            good = status == 200 and (
                hashlib.sha256(body).hexdigest() == check[1]
                if check[0] == "file"
                else digest_of(body).block_id == check[1]
            )
            with lock:
                if good:
                    result.completed_requests += 1
                else:
                    result.corrupt_responses += 1
                    result.problems.append(f"{name}: {url} answered {status} with wrong bytes")
            if stop_after is None and local.random() < 0.15:
                return  # the timing run: a short pull

    threads = [threading.Thread(target=device, args=(k,), daemon=True) for k in range(DEVICE_THREADS)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    if stop_after is not None:
        time.sleep(max(0.0, stop_after - (time.monotonic() - t0)))
        rig.edge.kill()
        stop.set()
    for t in threads:
        t.join(timeout=HTTP_TIMEOUT_S + 5)


# -- the benchmark -----------------------------------------------------------------------------

_RUNNERS: Final[dict[str, Callable[..., ScenarioResult]]] = {
    "publish": run_publish_crashes,
    "plan": run_plan_crashes,
    "fetch": run_fetch_crashes,
}


def main() -> None:
    """Run the scenarios and write bench/results/reliability_crash.json."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=50, help="SIGKILLs per scenario (default 50)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cachenet-crash-"))
    results = []
    try:
        for k, scenario in enumerate(args.scenarios.split(",")):
            r = _RUNNERS[scenario](work / scenario, kills=args.kills, seed=args.seed + k)
            print(
                f"{scenario}: {r.kills} kills, {r.survived} survived, damage {r.damage}, {r.seconds} s",
                file=sys.stderr,
            )
            results.append(r)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    path = write_result(
        "reliability_crash",
        {
            "kills_per_scenario": args.kills,
            "seed": args.seed,
            "scenarios": {r.scenario: r.to_json() for r in results},
            "total_kills": sum(r.kills for r in results),
            "total_survived": sum(r.survived for r in results),
            "total_damage": sum(r.damage for r in results),
            "notes": "damage = lost blocks + corrupt blocks + orphan temp files + wrong refcounts "
            "+ "
            "incomplete acknowledged publishes + corrupt responses; must be 0. Servers run as "
            "`python -m cachenet`.",
        },
    )
    print(path)


def _child_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.pop("CACHENET_TOKEN", None)
    return env


if __name__ == "__main__":
    main()
