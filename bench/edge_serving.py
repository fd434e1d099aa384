"""An edge node serving blocks it holds versus nginx (sendfile) serving the same files.

Both servers run in the same run on loopback, serve the very same inodes (nginx's folder
holds hard links to the edge node's block files, so both read the same warm page cache)
and face the same client: N parallel `curl` processes fetching a fixed list of URLs
(GB/s, 16 MiB and 1 MiB bodies, 1/8/64 connections) and `wrk` for 4 KiB bodies (req/s).
Measurements alternate between the servers (the first server flips every round); the
report gives per-round numbers, medians and cachenet/nginx ratios. nginx and wrk must be
installed (`apt-get install nginx wrk`). The machine's cores are shared by client and
servers, equally for both servers.
"""

import argparse
import os
import random
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, Final

from bench.machine import write_result
from bench.processes import free_port, start_nginx, stop_processes
from cachenet.blockid import digest_of
from cachenet.blockstore import BlockStore

__all__ = ("main",)

MIB: Final = 1024 * 1024
SERVERS: Final = ("nginx", "cachenet")
LIMITS_NOTE: Final = (
    "Both servers share 2 vCPUs with the client (curl processes or wrk). nginx: 2 worker "
    "processes, sendfile, ~10 us of CPU per small request; big bodies are limited by the "
    "kernel's page-cache-to-socket copy on loopback and by curl's receive side. cachenet: one "
    "uvloop process; bodies >= 256 KiB go through os.sendfile in a worker thread (a thread hop "
    "+ header flush per request), smaller ones through pread in a worker thread + write; small "
    "requests are limited by Python/aiohttp per-request CPU (routing, middlewares, store "
    "lookup, response object), so the 4 KiB case measures per-request overhead, not bandwidth."
)


def main() -> None:
    """Run the benchmark and write bench/results/edge_serving.json."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--connections", default="1,8,64", help="parallel curl processes (default 1,8,64)")
    parser.add_argument("--large-blocks", type=int, default=64, help="16 MiB blocks stored (default 64)")
    parser.add_argument("--medium-blocks", type=int, default=256, help="1 MiB blocks stored (default 256)")
    parser.add_argument("--small-blocks", type=int, default=1000, help="4 KiB blocks stored (default 1000)")
    parser.add_argument(
        "--large-requests",
        type=int,
        default=128,
        help="16 MiB requests per measurement (default 128)",
    )
    parser.add_argument(
        "--medium-requests",
        type=int,
        default=2048,
        help="1 MiB requests per measurement (default 2048)",
    )
    parser.add_argument("--wrk-seconds", type=int, default=10, help="wrk duration per measurement (default 10)")
    parser.add_argument("--wrk-connections", type=int, default=64, help="wrk connections (default 64)")
    parser.add_argument("--wrk-threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--workdir", type=Path, help="parent folder for the temporary data (default: system temp)")
    parser.add_argument("--seed", type=int, default=0, help="seed for block contents and request order")
    args = parser.parse_args()
    missing = [tool for tool in ("nginx", "wrk", "curl") if shutil.which(tool) is None]
    if missing:
        sys.exit(
            f"edge_serving needs {', '.join(missing)} on PATH; install with: "
            "apt-get update && apt-get install -y nginx wrk curl"
        )
    connections = [int(c) for c in args.connections.split(",")]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cachenet-edge-bench-", dir=args.workdir) as tmp_name:
        tmp = Path(tmp_name)
        os.chmod(tmp, 0o755)  # nginx workers may run as another user
        rng = random.Random(args.seed)
        print("writing blocks ...", file=sys.stderr, flush=True)
        store = BlockStore(tmp / "edge" / "store", fsync=False)
        blocks = {
            "16MiB": _make_blocks(store, rng, args.large_blocks, 16 * MIB),
            "1MiB": _make_blocks(store, rng, args.medium_blocks, MIB),
            "4KiB": _make_blocks(store, rng, args.small_blocks, 4096),
        }
        flat = tmp / "nginx-blocks"
        flat.mkdir()
        for ids in blocks.values():
            for block_id in ids:
                os.link(store.path(block_id), flat / block_id)
                os.chmod(flat / block_id, 0o644)
        for d in (tmp / "edge", tmp / "edge" / "store", *(store.root / "blocks").rglob("*")):
            if d.is_dir():
                os.chmod(d, 0o755)
        total_bytes = sum(store.sizes().values())
        del store
        ports = {"nginx": free_port(), "cachenet": free_port()}
        procs: dict[str, subprocess.Popen[bytes]] = {}
        try:
            procs["nginx"] = start_nginx(tmp, ports["nginx"], location="/v1/blocks/", folder=flat)
            procs["cachenet"] = _start_edge(tmp, ports["cachenet"], capacity=total_bytes * 2)
            base = {name: f"http://127.0.0.1:{port}/v1/blocks/" for name, port in ports.items()}
            for name in SERVERS:
                _wait_ready(procs[name], base[name] + blocks["4KiB"][0], tmp / f"{name}.log")
                for size in ("16MiB", "1MiB", "4KiB"):
                    _check_body(base[name], blocks[size][0])
            syscalls = {name: _syscall_check(name, procs[name].pid, base[name], blocks) for name in SERVERS}
            print("warming up ...", file=sys.stderr, flush=True)
            plans = _request_plans(blocks, connections, args, rng)
            for name in SERVERS:
                _curl_run(base[name], _split(blocks["16MiB"] + blocks["1MiB"], 8), tmp / "curl")
                _wrk_run(
                    base[name],
                    blocks["4KiB"],
                    tmp,
                    seconds=2,
                    threads=args.wrk_threads,
                    conns=args.wrk_connections,
                )
            raw: dict[str, dict[str, list[dict[str, Any]]]] = {}
            server_logs = {"nginx": tmp / "nginx-error.log", "cachenet": tmp / "cachenet.log"}
            for r in range(args.rounds):
                order = SERVERS if r % 2 == 0 else SERVERS[::-1]
                for case, (_size, lists) in plans.items():
                    for name in order:
                        m = _measure(
                            procs[name].pid,
                            server_logs[name],
                            partial(_curl_run, base[name], lists, tmp / "curl"),
                        )
                        raw.setdefault(case, {}).setdefault(name, []).append(m)
                        print(
                            f"round {r} {case:>14} {name:>8}: {m['gb_per_s']:.3f} GB/s"
                            f"{'  ERRORS ' + str(m['errors']) if m['errors'] else ''}",
                            file=sys.stderr,
                            flush=True,
                        )
                for name in order:
                    m = _measure(
                        procs[name].pid,
                        server_logs[name],
                        partial(
                            _wrk_run,
                            base[name],
                            blocks["4KiB"],
                            tmp,
                            seconds=args.wrk_seconds,
                            threads=args.wrk_threads,
                            conns=args.wrk_connections,
                        ),
                    )
                    raw.setdefault("4KiB_wrk", {}).setdefault(name, []).append(m)
                    print(
                        f"round {r} {'4KiB_wrk':>14} {name:>8}: {m['requests_per_s']:.0f} req/s"
                        f"{'  ERRORS ' + str(m['errors']) if m['errors'] else ''}",
                        file=sys.stderr,
                        flush=True,
                    )
        finally:
            stop_processes(procs)
        logs = {name: (tmp / f"{name}.log").read_text(errors="replace") for name in SERVERS}
        error_log = tmp / "nginx-error.log"
        logs["nginx_error_log"] = error_log.read_text(errors="replace") if error_log.exists() else ""
    summary = _summarise(raw)
    result = {
        "parameters": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "stored_bytes": total_bytes,
        "client": "curl processes in parallel, each fetching its share of a fixed shuffled URL "
        "list over one keep-alive connection, -o /dev/null; wall time of all -> GB/s (1e9 bytes); "
        f"wrk -t{args.wrk_threads} -c{args.wrk_connections} -d{args.wrk_seconds}s rotating over "
        f"{len(blocks['4KiB'])} 4 KiB blocks",
        "servers": {
            "nginx": "2 workers, sendfile on, tcp_nopush on, access_log off, alias to hard links",
            "cachenet": "cachenet edge serve (aiohttp + uvloop, cachenet.server.filesend zero-copy path)",
        },
        "order": "interleaved per measurement; nginx first in even rounds, cachenet in odd rounds",
        "syscall_check": syscalls,
        "summary": summary,
        "raw": raw,
        "server_cpu_note": "server_cpu_s = user+system CPU of the server process(es) during the "
        "measurement; "
        "client_cpu_s = CPU of the curl/wrk processes",
        "limits_note": LIMITS_NOTE,
        "server_log_error_lines": {
            name: sum(" ERROR " in line or "[error]" in line for line in text.splitlines())
            for name, text in logs.items()
        },
        "server_log_error_kinds": {
            name: sorted(
                {
                    line.strip()
                    for line in text.splitlines()
                    if line.startswith(("aiohttp.", "ConnectionResetError", "OSError")) or "[error]" in line
                }
            )[:10]
            for name, text in logs.items()
        },
        "server_log_note": "error lines each server logged, per measurement in "
        "raw.<case>.<server>.server_log_errors; cachenet logs 'Cannot write to closing "
        "transport' when wrk closes its connections mid-response as its run ends (warm-up "
        "included in the totals above)",
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    path = write_result("edge_serving", result)
    for case, s in summary.items():
        unit = "req/s" if case == "4KiB_wrk" else "GB/s"
        print(
            f"{case:>14}: nginx {s['nginx_median']} {unit}, "
            f"cachenet {s['cachenet_median']} {unit}, "
            f"cachenet/nginx {s['ratio_cachenet_over_nginx']}"
        )
    print(f"wrote {path}")


def _make_blocks(store: BlockStore, rng: random.Random, count: int, size: int) -> list[str]:
    ids = []
    for _ in range(count):
        data = rng.randbytes(size)
        block_id = digest_of(data).block_id
        store.put(block_id, data)
        ids.append(block_id)
    return ids


def _request_plans(
    blocks: dict[str, list[str]],
    connections: list[int],
    args: argparse.Namespace,
    rng: random.Random,
) -> dict[str, tuple[str, list[list[str]]]]:
    """Case name → (size, one URL-suffix list per curl process); identical for both servers."""
    plans = {}
    for size, count in (("16MiB", args.large_requests), ("1MiB", args.medium_requests)):
        ids = blocks[size]
        requests = [ids[i % len(ids)] for i in range(count)]
        rng.shuffle(requests)
        for c in connections:
            plans[f"{size}_c{c}"] = (size, _split(requests, c))
    return plans


def _split(items: list[str], parts: int) -> list[list[str]]:
    return [items[i::parts] for i in range(parts) if items[i::parts]]


def _curl_run(base: str, lists: list[list[str]], folder: Path) -> dict[str, Any]:
    """Run one curl per list in parallel; wall time, bytes and non-200 count."""
    folder.mkdir(exist_ok=True)
    configs = []
    for i, ids in enumerate(lists):
        cfg = folder / f"urls-{i}.cfg"
        cfg.write_text("".join(f'url = "{base}{b}"\noutput = "/dev/null"\n' for b in ids))
        configs.append(cfg)
    argv = ["curl", "-s", "-w", "%{http_code} %{size_download}\\n", "-K"]
    start = time.perf_counter()
    procs = [subprocess.Popen([*argv, str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) for cfg in configs]
    outputs = [p.communicate()[0] for p in procs]
    elapsed = time.perf_counter() - start
    nbytes, errors, requests = 0, 0, 0
    for p, out in zip(procs, outputs, strict=True):
        errors += p.returncode != 0
        for line in out.decode().splitlines():
            code, size = line.split()
            requests += 1
            nbytes += int(size)
            errors += code != "200"
    errors += sum(len(ids) for ids in lists) - requests
    return {
        "wall_s": round(elapsed, 4),
        "bytes": nbytes,
        "requests": requests,
        "errors": errors,
        "gb_per_s": round(nbytes / elapsed / 1e9, 4),
    }


def _wrk_run(base: str, ids: list[str], tmp: Path, *, seconds: int, threads: int, conns: int) -> dict[str, Any]:
    """wrk over all `ids` in turn; requests/s and errors."""
    prefix = "/" + base.split("/", 3)[3]
    script = tmp / "rotate.lua"
    script.write_text(
        "local ids = {" + ",".join(f'"{b}"' for b in ids) + "}\nlocal n = #ids\nlocal i = 0\n"
        "request = function()\n  i = i + 1\n"
        f'  return wrk.format("GET", "{prefix}" .. ids[(i % n) + 1])\nend\n'
    )
    root = base.split("/v1/")[0]
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "-s", str(script), root],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(int(g) for g in sock.groups()) if sock else 0)
    return {
        "requests_per_s": rps,
        "requests": total,
        "errors": errors,
        "wrk_output": out.strip().splitlines(),
    }


def _measure(server_pid: int, log: Path, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run a client measurement, adding CPU seconds and the error lines the server logged."""
    log_errors_before = _log_error_lines(log)
    server_before = _cpu_seconds(server_pid)
    client_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    m = run()
    client_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    m["server_cpu_s"] = round(_cpu_seconds(server_pid) - server_before, 3)
    m["server_log_errors"] = _log_error_lines(log) - log_errors_before
    m["client_cpu_s"] = round(
        client_after.ru_utime + client_after.ru_stime - client_before.ru_utime - client_before.ru_stime,
        3,
    )
    return m


def _log_error_lines(log: Path) -> int:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return 0
    return sum(" ERROR " in line or "[error]" in line for line in text.splitlines())


def _cpu_seconds(pid: int) -> float:
    """User+system CPU of a process and its live children (nginx workers), all threads."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in [pid, *_children(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _syscall_check(name: str, pid: int, base: str, blocks: dict[str, list[str]]) -> dict[str, Any]:
    """Count the server's send syscalls (strace -c) serving one 16 MiB and one 1 MiB block."""
    if shutil.which("strace") is None:
        return {"checked": False, "reason": "strace not installed"}
    tids = [int(t.name) for p in [pid, *_children(pid)] for t in Path(f"/proc/{p}/task").iterdir()]
    out = Path(tempfile.mkstemp(prefix=f"strace-{name}-")[1])
    argv = [
        "strace",
        "-f",
        "-qq",
        "-c",
        "-o",
        str(out),
        "-e",
        "trace=sendfile,read,pread64,write,writev,sendmsg",
    ]
    for t in tids:
        argv += ["-p", str(t)]
    tracer = subprocess.Popen(argv, stderr=subprocess.PIPE)
    time.sleep(1.0)
    try:
        for size in ("16MiB", "1MiB"):
            subprocess.run(["curl", "-s", "-o", "/dev/null", base + blocks[size][1]], check=True)
    finally:
        tracer.send_signal(signal.SIGINT)
        err = tracer.communicate(timeout=30)[1].decode(errors="replace")
    calls = {}
    for line in out.read_text().splitlines():
        tokens = line.split()
        if len(tokens) >= 5 and tokens[-1].isidentifier() and tokens[3].isdigit():
            calls[tokens[-1]] = int(tokens[3])
    out.unlink()
    if not calls:
        return {"checked": False, "reason": f"strace gave no counts: {err.strip()[:300]}"}
    return {
        "checked": True,
        "requests": "one 16 MiB + one 1 MiB block",
        "syscall_calls": calls,
        "sendfile_used": calls.get("sendfile", 0) > 0,
    }


def _summarise(raw: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, dict[str, Any]]:
    summary = {}
    for case, by_server in raw.items():
        key = "requests_per_s" if case == "4KiB_wrk" else "gb_per_s"
        med = {name: statistics.median(m[key] for m in runs) for name, runs in by_server.items()}
        summary[case] = {
            "metric": key,
            "nginx_median": round(med["nginx"], 3),
            "cachenet_median": round(med["cachenet"], 3),
            "ratio_cachenet_over_nginx": round(med["cachenet"] / med["nginx"], 3),
            "nginx_rounds": [m[key] for m in by_server["nginx"]],
            "cachenet_rounds": [m[key] for m in by_server["cachenet"]],
            "errors": {name: sum(m["errors"] for m in runs) for name, runs in by_server.items()},
            "server_log_errors": {name: sum(m["server_log_errors"] for m in runs) for name, runs in by_server.items()},
            "server_cpu_s_median": {
                name: statistics.median(m["server_cpu_s"] for m in runs) for name, runs in by_server.items()
            },
        }
    return summary


def _start_edge(tmp: Path, port: int, *, capacity: int) -> "subprocess.Popen[bytes]":
    log = open(tmp / "cachenet.log", "wb")  # noqa: SIM115 - the child holds it
    argv = [
        sys.executable,
        "-m",
        "cachenet",
        "edge",
        "serve",
        "--node-id",
        "bench-edge",
        "--data",
        str(tmp / "edge"),
        "--capacity",
        str(capacity),
        "--origin",
        f"http://127.0.0.1:{free_port()}",
        "--port",
        str(port),
        "--token",
        "bench-token",
    ]
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)


def _wait_ready(proc: "subprocess.Popen[bytes]", url: str, log: Path, *, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{proc.args[0]} exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    sys.exit(f"{url} not ready after {timeout_s} s:\n{log.read_text(errors='replace')[-3000:]}")


def _check_body(base: str, block_id: str) -> None:
    with urllib.request.urlopen(base + block_id, timeout=30) as resp:
        body = resp.read()
    if digest_of(body).block_id != block_id:
        sys.exit(f"{base}{block_id} returned {len(body)} bytes that do not hash to the block id")


if __name__ == "__main__":
    main()
