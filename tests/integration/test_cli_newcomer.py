"""The command line as a newcomer meets it, against a real `cachenet up` cluster (no demo).

Every failure is one line on stderr (no traceback) naming what failed and what to do, with
an exit status by kind; client commands run in the cluster's folder find the cluster
(`cachenet-data/cluster.json`, `cachenet-data/token`) without flags.
"""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cachenet.cli import EXIT_BAD_INPUT, EXIT_NOT_FOUND, EXIT_REFUSED, EXIT_UNREACHABLE
from tests.clients.support import free_port_block
from tests.modelgen import write_safetensors

SERVERS = 5  # origin, controller, 3 edge nodes of the demo topology


@dataclass
class Run:
    code: int
    out: str
    err: str


@dataclass
class LocalCluster:
    home: Path  # the folder `cachenet up` was run in (it holds cachenet-data/)
    data: Path
    base_port: int
    token: str

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.base_port}"

    @property
    def controller(self) -> str:
        return f"http://127.0.0.1:{self.base_port + 1}"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHENET_")}
    return {**env, **extra}


def cachenet(*args: str, cwd: Path, timeout: float = 120, **env: str) -> Run:
    proc = subprocess.run(
        [sys.executable, "-m", "cachenet", *args],
        cwd=cwd,
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


def assert_one_line_error(run: Run, code: int, *needles: str) -> str:
    lines = [ln for ln in run.err.splitlines() if ln.strip()]
    assert run.code == code, (run.code, run.err, run.out)
    assert "Traceback" not in run.err, run.err
    assert len(lines) == 1, run.err
    assert lines[0].startswith("cachenet: error: "), lines
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """`cachenet up` run in a folder of its own, as the README says (default data folder)."""
    home = tmp_path_factory.mktemp("newcomer")
    base = free_port_block(SERVERS)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cachenet", "up", "--base-port", str(base)],
        cwd=home,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    data = home / "cachenet-data"
    try:
        deadline = time.monotonic() + 120
        while not (data / "cluster.json").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "cluster did not start"
            time.sleep(0.2)
        yield LocalCluster(home, data, base, (data / "token").read_text().strip())
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """A folder with no cluster in it."""
    return tmp_path


def _model(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"a": 1}')
    header: dict[str, object] = {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}
    write_safetensors(folder / "model.safetensors", header, b"\0" * 16)
    return folder


def test_placement_commands_find_the_clusters_controller(cluster: LocalCluster) -> None:
    cluster_doc = json.loads((cluster.data / "cluster.json").read_text())
    assert cluster_doc["controller"] == cluster.controller and cluster_doc["origin"] == cluster.origin
    show = cachenet("placement", "show", cwd=cluster.home)
    assert show.code == 0, show.err
    assert "Traceback" not in show.err
    rec = cachenet("placement", "recompute", cwd=cluster.home)  # the token comes from cachenet-data/token
    assert rec.code == 0, rec.err
    assert rec.out.startswith("run "), rec.out
    assert " 1 blocks" not in rec.out and " 1 models" not in rec.out


def test_placement_show_with_no_controller_is_one_line(elsewhere: Path) -> None:
    run = cachenet("placement", "show", cwd=elsewhere, CACHENET_CONTROLLER=f"http://127.0.0.1:{free_port_block(1)}")
    assert_one_line_error(run, EXIT_UNREACHABLE, "cannot reach", "connection refused", "cachenet up", "--controller")


def test_models_list_and_show_against_a_dead_origin_are_one_line(elsewhere: Path) -> None:
    dead = f"http://127.0.0.1:{free_port_block(1)}"
    assert_one_line_error(cachenet("models", "list", "--origin", dead, cwd=elsewhere), EXIT_UNREACHABLE, "cannot reach")
    assert_one_line_error(
        cachenet("models", "show", "acme/x", "--origin", dead, cwd=elsewhere), EXIT_UNREACHABLE, "cannot reach"
    )
    debug = cachenet("models", "list", "--debug", "--origin", dead, cwd=elsewhere)
    assert debug.code != 0 and "Traceback" in debug.err  # --debug shows the traceback instead


def test_models_list_has_a_header_and_show_of_a_missing_model_is_one_line(cluster: LocalCluster) -> None:
    run = cachenet("publish", str(_model(cluster.home / "m1")), "--name", "acme/m1", cwd=cluster.home)
    assert run.code == 0, run.err
    assert "1 new block" in run.out or "new blocks" in run.out
    listing = cachenet("models", "list", cwd=cluster.home)
    assert listing.code == 0, listing.err
    header, *rows = listing.out.splitlines()
    assert header.split()[:2] == ["NAME", "SIZE"] and any(r.startswith("acme/m1") for r in rows)
    missing = cachenet("models", "show", "acme/nothing", cwd=cluster.home)
    assert_one_line_error(missing, EXIT_NOT_FOUND, "acme/nothing", "cachenet models list")
    show = cachenet("models", "show", "acme/m1", cwd=cluster.home)
    assert show.code == 0 and "1 block " in show.out and "1 blocks" not in show.out, show.out


def test_second_up_refuses_the_taken_port_in_one_line(cluster: LocalCluster, elsewhere: Path) -> None:
    run = cachenet("up", "--base-port", str(cluster.base_port), cwd=elsewhere, timeout=60)
    line = assert_one_line_error(run, EXIT_BAD_INPUT, f"ports {cluster.base_port} (origin), ", "--base-port")
    assert "running" not in run.out and "already in use" in line


def test_a_server_on_a_taken_port_says_so_in_one_line(cluster: LocalCluster, elsewhere: Path) -> None:
    run = cachenet("origin", "serve", "--data", str(elsewhere / "o"), "--port", str(cluster.base_port), cwd=elsewhere)
    assert_one_line_error(run, EXIT_BAD_INPUT, "already in use", "--port")


def test_publish_into_a_running_origins_folder_is_refused_naming_origin(cluster: LocalCluster) -> None:
    folder = _model(cluster.home / "m2")
    into = str(cluster.data / "origin")
    run = cachenet("publish", str(folder), "--name", "acme/m2", "--data", into, cwd=cluster.home)
    assert_one_line_error(run, EXIT_BAD_INPUT, f"--origin {cluster.origin}")


def test_missing_and_wrong_tokens_say_where_a_token_comes_from(cluster: LocalCluster, elsewhere: Path) -> None:
    folder = _model(elsewhere / "m3")
    missing = cachenet("publish", str(folder), "--name", "acme/m3", "--origin", cluster.origin, cwd=elsewhere)
    line_missing = assert_one_line_error(missing, EXIT_REFUSED, "--token", "CACHENET_TOKEN", "DATA/token")
    wrong = cachenet(
        "publish", str(folder), "--name", "acme/m3", "--origin", cluster.origin, "--token", "nope", cwd=elsewhere
    )
    line_wrong = assert_one_line_error(wrong, EXIT_REFUSED, "refused the operator token")
    assert line_missing != line_wrong
    rec = cachenet("placement", "recompute", "--controller", cluster.controller, cwd=elsewhere)
    assert_one_line_error(rec, EXIT_REFUSED, "CACHENET_TOKEN")


def test_controller_metrics_are_not_empty_and_start_up_logs_have_no_exception_repr(cluster: LocalCluster) -> None:
    with urllib.request.urlopen(f"{cluster.controller}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    assert "cachenet_controller_nodes 3.0" in text
    for log in (cluster.data / "logs").glob("*.log"):
        body = log.read_text(errors="replace")
        assert "Traceback" not in body, log
        assert "Error(" not in body and "ConnectionKey(" not in body, (log, body[-2000:])


def test_the_operator_token_is_on_no_child_command_line(cluster: LocalCluster) -> None:
    # Every user can read every command line (`ps`); the children get the token by environment.
    children = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:  # a process that ended while we looked
            continue
        if any(str(cluster.data).encode() in a for a in argv) and b"serve" in argv:
            children.append(argv)
    assert len(children) == SERVERS, children  # origin, three edges, controller
    assert not any(cluster.token.encode() in a for argv in children for a in argv)
