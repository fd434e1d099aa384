"""Decoding and encoding wire messages (msgspec Structs): one definition gives validation, JSON and schemas.

msgspec was chosen over pydantic by measuring decode + validation of our hot request bodies
(bench/wire_decode.py: 1.5-1.9x faster on a 10,000-ref plan and a 384-float query, and no
model objects built per list item). A message that does not validate is `BadInput`, naming the
field (`$.blocks[3]`), never a 500.
"""

import functools
from collections.abc import Hashable, Iterable
from typing import Any, Final, TypeVar, cast

import msgspec

from cachenet.errors import BadInput

__all__ = ("OPENAPI_REF_TEMPLATE", "decode_json", "encode_json", "schema_components")

OPENAPI_REF_TEMPLATE: Final = "#/components/schemas/{name}"
T = TypeVar("T")


def decode_json(raw: bytes | bytearray | memoryview, into: type[T], *, what: str = "body") -> T:
    """Decode and validate a JSON message; raises `BadInput` saying what is wrong and where."""
    try:
        decoded: T = _decoder(cast(Hashable, into)).decode(raw)
        return decoded
    except msgspec.ValidationError as e:
        raise BadInput(f"{what} is invalid: {e}") from None
    except msgspec.DecodeError as e:
        raise BadInput(f"{what} is not valid JSON: {e}") from None


def encode_json(message: Any) -> bytes:
    """The JSON bytes of a message (Structs, lists and dicts of them, plain JSON values)."""
    return msgspec.json.encode(message)


def schema_components(types: Iterable[Any]) -> tuple[tuple[dict[str, Any], ...], dict[str, Any]]:
    """JSON schemas of `types` as OpenAPI references, and the components they refer to."""
    return msgspec.json.schema_components(list(types), ref_template=OPENAPI_REF_TEMPLATE)


@functools.cache
def _decoder(into: Any) -> "msgspec.json.Decoder[Any]":
    return msgspec.json.Decoder(into)
