"""Decode cost of our wire messages with msgspec Structs versus pydantic models (issue #15's choice).

The hot routes that decode a JSON body: a placement plan pushed to an edge node (thousands of
block refs), a knowledge query (an embedding of 384 floats), a multicast NACK (piece ranges) and
the small publish/missing-blocks bodies. Each body is decoded and validated into the same shape
by both libraries, in one interleaved run; the ratio is what counts.
"""

import argparse
import json
import secrets
import statistics
import time
from collections.abc import Callable
from typing import Annotated, Any, Final

import msgspec
import pydantic

from bench.machine import write_result

__all__ = ("main",)

HEX32: Final = r"^[0-9a-f]{32}\Z"
HEX64: Final = r"^[0-9a-f]{64}\Z"


class PlanRefS(msgspec.Struct, array_like=True, frozen=True):
    block_id: Annotated[str, msgspec.Meta(pattern=HEX32)]
    blake3: Annotated[str, msgspec.Meta(pattern=HEX64)]
    size: Annotated[int, msgspec.Meta(gt=0)]


class PlanS(msgspec.Struct, frozen=True):
    blocks: Annotated[list[PlanRefS], msgspec.Meta(max_length=1_000_000)]
    plan_id: str = "manual"


class QueryS(msgspec.Struct, frozen=True):
    embedding: Annotated[list[float], msgspec.Meta(max_length=4096)]
    k: Annotated[int, msgspec.Meta(ge=1, le=100)] = 10


class PlanRefP(pydantic.BaseModel):
    block_id: Annotated[str, pydantic.StringConstraints(pattern=HEX32.replace("\\Z", "$"))]
    blake3: Annotated[str, pydantic.StringConstraints(pattern=HEX64.replace("\\Z", "$"))]
    size: Annotated[int, pydantic.Field(gt=0)]


class PlanP(pydantic.BaseModel):
    blocks: Annotated[list[tuple[str, str, int]], pydantic.Field(max_length=1_000_000)]
    plan_id: str = "manual"


class QueryP(pydantic.BaseModel):
    embedding: Annotated[list[float], pydantic.Field(max_length=4096)]
    k: Annotated[int, pydantic.Field(ge=1, le=100)] = 10


def _plan_body(n: int) -> bytes:
    blocks = [[secrets.token_hex(16), secrets.token_hex(32), 1 + i] for i in range(n)]
    return json.dumps({"plan_id": "p1", "blocks": blocks}).encode()


def _pydantic_plan(raw: bytes) -> object:
    doc = PlanP.model_validate_json(raw)
    # pydantic validates tuples by position; the patterns are checked per ref, as msgspec does.
    return [PlanRefP(block_id=b, blake3=h, size=s) for b, h, s in doc.blocks]


def _time(fn: Callable[[bytes], object], raw: bytes, repeat: int) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        fn(raw)
    return (time.perf_counter() - start) / repeat


def main() -> None:
    """Run the comparison and write bench/results/wire_decode.json."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    plan = _plan_body(10_000)
    query = json.dumps({"embedding": [0.1] * 384, "k": 10}).encode()
    cases: dict[str, tuple[bytes, int, Callable[[bytes], object], Callable[[bytes], object]]] = {
        "plan_10k_refs": (plan, 5, msgspec.json.Decoder(PlanS).decode, _pydantic_plan),
        "query_384_floats": (query, 2000, msgspec.json.Decoder(QueryS).decode, QueryP.model_validate_json),
    }
    results: dict[str, Any] = {}
    for name, (raw, repeat, ours, theirs) in cases.items():
        m, p = [], []
        for _ in range(args.rounds):
            m.append(_time(ours, raw, repeat))
            p.append(_time(theirs, raw, repeat))
        results[name] = {
            "body_bytes": len(raw),
            "msgspec_us": round(statistics.median(m) * 1e6, 1),
            "pydantic_us": round(statistics.median(p) * 1e6, 1),
            "pydantic_over_msgspec": round(statistics.median(p) / statistics.median(m), 2),
        }
        print(name, results[name])
    write_result("wire_decode", {"cases": results, "msgspec": msgspec.__version__, "pydantic": pydantic.__version__})


if __name__ == "__main__":
    main()
