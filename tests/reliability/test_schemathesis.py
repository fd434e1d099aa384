"""schemathesis against the OpenAPI document of every server: origin, edge node, controller.

All three run for real on loopback. Every documented operation gets generated requests
(positive and negative data); operator operations run once with the operator token and
once without. Each response must not be a 5xx, must have a documented status and content
type, and its JSON body must match the documented schema. The numbers of cases and of 5xx
answers are written to `<pytest basetemp>/schemathesis_counts.json`.

schemathesis calls servers with `requests` (blocking), so the whole run happens in a
worker thread while the event loop serves the three apps.
"""

import asyncio
import json
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
import pytest
import schemathesis
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from placement.app import create_app as create_controller_app
from placement.config import ControllerSettings
from registry.publish import HttpTarget, publish_path
from tests.conftest import OPERATOR_TOKEN

TOPOLOGY: Final = Path(__file__).parents[2] / "deploy" / "topologies" / "demo.yaml"
MAX_EXAMPLES: Final = 20
# Recomputation runs a solver (the MILP one has a time limit): fewer cases there.
FEW_EXAMPLES: Final = {"POST /v1/placement/recompute": 6, "GET /v1/simulation": 5}
CHECKS: Final = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@dataclass
class RunStats:
    """What one run of every server's operations saw."""

    cases: Counter[str] = field(default_factory=Counter)
    server_errors: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    unsatisfiable: list[str] = field(default_factory=list)


def _url(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


def _publish_sample(folder: Path) -> Path:
    """A tiny model folder: one safetensors file (two tensors) and a config.json."""
    folder.mkdir(parents=True)
    header = json.dumps(
        {
            "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
            "b": {"dtype": "U8", "shape": [3], "data_offsets": [8, 11]},
        }
    ).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(range(11)))
    (folder / "config.json").write_text('{"model_type": "fuzz"}')
    return folder


def _run_server(name: str, base: str, stats: RunStats, known: dict[str, str]) -> None:
    """Every operation of one server's document, with and without the token where it matters.

    Besides positive and negative data, operations with path parameters run once more with
    the published model's real name, revision, file path and a real block id, so that the
    2xx answers (bodies, ranges, manifests) are checked too, not only the refusals.
    """
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json", timeout=10)
    raw = schema.raw_schema
    for result in schema.get_all_operations():
        op = result.ok()  # type: ignore[union-attr]  # an unloadable operation fails loudly
        secured = bool(raw["paths"][op.path][op.method.lower()].get("security"))
        label = f"{op.method.upper()} {op.path}"
        examples = FEW_EXAMPLES.get(label, MAX_EXAMPLES)
        params = {
            p["name"] for p in raw["paths"][op.path][op.method.lower()].get("parameters", []) if p["in"] == "path"
        }
        fixed = {k: v for k, v in known.items() if k in params} if params <= set(known) and params else None
        for token in (OPERATOR_TOKEN, None) if secured else (None,):
            for mode in [*schemathesis.GenerationMode, *(["known"] if fixed else [])]:
                auth = "token" if token else "no-token"
                key = f"{name} {label} {getattr(mode, 'value', mode)} {auth}"
                try:
                    if mode == "known":
                        strategy = op.as_strategy(path_parameters=fixed)
                    else:
                        strategy = op.as_strategy(generation_mode=mode)
                    _run_operation(strategy, base, token, examples, key, stats)
                except Unsatisfiable:  # no invalid value exists (e.g. a route without parameters)
                    stats.unsatisfiable.append(key)
                # schemathesis' FailureGroup is a BaseExceptionGroup: collect, report them together.
                except (Exception, BaseExceptionGroup) as e:
                    stats.failures.append(f"{key}: {type(e).__name__}: {str(e)[:1500]}")


def _run_operation(strategy: Any, base: str, token: str | None, examples: int, key: str, stats: RunStats) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def check(case: Any) -> None:
        response = case.call(base_url=base, headers=headers, timeout=60)
        stats.cases[key] += 1
        stats.statuses[response.status_code] += 1
        if response.status_code >= 500:
            stats.server_errors[key] += 1
        case.validate_response(response, checks=CHECKS, headers=headers)

    check()


async def test_every_server_conforms_to_its_openapi_document(
    origin_server: TestServer,
    edge_factory: Callable[..., Any],
    aiohttp_server: Callable[..., Any],
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    target = HttpTarget(_url(origin_server), OPERATOR_TOKEN)
    try:
        await publish_path(_publish_sample(tmp_path / "model"), name="fuzz/model", target=target, progress=False)
    finally:
        await target.close()
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"{_url(origin_server)}/v1/models/fuzz/model/revisions/main") as r,
    ):
        manifest = await r.json()
    known = {
        "name": "fuzz/model",
        "revision": "main",
        "path": "model.safetensors",
        "block_id": manifest["files"][0]["blocks"][0][0],
    }
    edge = await edge_factory(origin=origin_server, capacity_bytes=1 << 20)
    controller = await aiohttp_server(
        create_controller_app(
            ControllerSettings(
                topology=TOPOLOGY,
                origin_url=_url(origin_server),
                data_dir=tmp_path / "controller",
                token=OPERATOR_TOKEN,
                nodes=(f"edge-1={_url(edge)}",),
            )
        )
    )
    stats = RunStats()
    for name, server in (("origin", origin_server), ("edge", edge), ("controller", controller)):
        await asyncio.to_thread(_run_server, name, _url(server), stats, known)

    summary: dict[str, Any] = {
        "cases": sum(stats.cases.values()),
        "server_errors_5xx": sum(stats.server_errors.values()),
        "operations_runs": len(stats.cases),
        "cases_per_server": {
            s: sum(n for k, n in stats.cases.items() if k.startswith(s + " ")) for s in ("origin", "edge", "controller")
        },
        "statuses": dict(sorted(stats.statuses.items())),
        "negative_runs_without_invalid_inputs": len(stats.unsatisfiable),
        "failures": stats.failures,
    }
    (tmp_path_factory.getbasetemp() / "schemathesis_counts.json").write_text(json.dumps(summary, indent=1))
    assert summary["cases"] >= 500, summary
    assert not stats.server_errors, dict(stats.server_errors)
    assert not stats.failures, "\n\n".join(stats.failures)
