"""The one exception hierarchy of cachenet, with the HTTP status each error maps to.

CachenetError
├── NotFound (LookupError)                 404
│   ├── BlockNotFound
│   ├── ModelNotFound                      Hugging Face clients see X-Error-Code: RepoNotFound
│   │   ├── RepoNotFound                   no model of that name
│   │   └── RevisionNotFound               the model exists, the tag or commit does not
│   └── FileNotInModel                     X-Error-Code: EntryNotFound
├── IntegrityError (ValueError)            409
│   ├── BlockCorrupt                       bytes do not match their id or BLAKE3
│   └── HashCollision                      same XXH3 id, different BLAKE3
├── BadInput (ValueError)                  422
│   ├── InvalidName                        names, ids, paths from the network
│   ├── ManifestInvalid
│   ├── SafetensorsInvalid
│   └── MissingBlocks                      a manifest names blocks the store lacks
├── RangeNotSatisfiable (ValueError)       416
├── CapacityExceeded (OSError)             507
├── Unauthorized (PermissionError)         401
├── Forbidden (PermissionError)             403   refused by a rule (e.g. a deny pattern)
├── TooManyRequests                        429   one client asked too often (Retry-After)
├── Overloaded                             503   a bounded queue is full (Retry-After)
└── UpstreamUnavailable (ConnectionError)  503
    └── UpstreamTimeout                    504   an upstream hub cannot be reached
"""

from typing import Any, ClassVar

__all__ = (
    "BadInput",
    "BlockCorrupt",
    "BlockNotFound",
    "CachenetError",
    "CapacityExceeded",
    "FileNotInModel",
    "Forbidden",
    "HashCollision",
    "IntegrityError",
    "InvalidName",
    "ManifestInvalid",
    "MissingBlocks",
    "ModelNotFound",
    "NotFound",
    "Overloaded",
    "RangeNotSatisfiable",
    "RepoNotFound",
    "RevisionNotFound",
    "SafetensorsInvalid",
    "TooManyRequests",
    "Unauthorized",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "error_from_payload",
)


class CachenetError(Exception):
    """Root of every error cachenet raises on purpose."""

    status: ClassVar[int] = 500
    # The `X-Error-Code` a Hugging Face client reads to pick its exception class.
    hf_code: ClassVar[str | None] = None

    def __init__(self, message: str, **attrs: Any) -> None:
        super().__init__(message)
        self.message = message
        self.attrs = attrs
        for key, value in attrs.items():
            setattr(self, key, value)

    def to_payload(self) -> dict[str, Any]:
        """The JSON body servers send for this error."""
        return {"error": type(self).__name__, "message": self.message, **self.attrs}


class NotFound(CachenetError, LookupError):
    """Something asked for does not exist."""

    status = 404


class BlockNotFound(NotFound):
    """A block id is not in the store."""


class ModelNotFound(NotFound):
    """A model name, revision or tag is not in the catalogue."""

    hf_code = "RepoNotFound"


class RepoNotFound(ModelNotFound):
    """No model of that name."""


class RevisionNotFound(ModelNotFound):
    """The model exists but not the tag or commit asked for."""

    hf_code = "RevisionNotFound"


class FileNotInModel(NotFound):
    """A file path is not part of a model revision."""

    hf_code = "EntryNotFound"


class IntegrityError(CachenetError, ValueError):
    """Bytes do not match the hashes that name them."""

    status = 409


class BlockCorrupt(IntegrityError):
    """A block's bytes do not hash to its id or its BLAKE3 digest."""


class HashCollision(IntegrityError):
    """A block id is already stored with a different BLAKE3 digest."""


class BadInput(CachenetError, ValueError):
    """Input that cannot be accepted as it is."""

    status = 422


class InvalidName(BadInput):
    """A name, id or path that is not allowed (for instance one that escapes a folder)."""


class ManifestInvalid(BadInput):
    """A manifest that does not follow the manifest format."""


class SafetensorsInvalid(BadInput):
    """A safetensors file whose header or layout is malformed."""


class MissingBlocks(BadInput):
    """A manifest names blocks that are not stored yet."""


class RangeNotSatisfiable(CachenetError, ValueError):
    """A Range header that selects nothing inside the resource."""

    status = 416


class CapacityExceeded(CachenetError, OSError):
    """A write would exceed the store's capacity or the disk."""

    status = 507


class Unauthorized(CachenetError, PermissionError):
    """An operator endpoint was called without the right bearer token."""

    status = 401


class UpstreamUnavailable(CachenetError, ConnectionError):
    """No upstream (origin, peer) could provide what was asked."""

    status = 503


class UpstreamTimeout(UpstreamUnavailable):
    """An upstream hub could not be reached for something not cached here."""

    status = 504


class Forbidden(CachenetError, PermissionError):
    """A request refused by a configured rule (not a missing credential)."""

    status = 403


class TooManyRequests(CachenetError):
    """One client asked more often than its share; `retry_after_s` says when to try again."""

    status = 429


class Overloaded(CachenetError):
    """A bounded queue of expensive work is full; `retry_after_s` says when to try again."""

    status = 503


_BY_NAME: dict[str, type[CachenetError]] = {
    cls.__name__: cls
    for cls in (
        CachenetError,
        NotFound,
        BlockNotFound,
        ModelNotFound,
        RepoNotFound,
        RevisionNotFound,
        FileNotInModel,
        IntegrityError,
        BlockCorrupt,
        HashCollision,
        BadInput,
        InvalidName,
        ManifestInvalid,
        SafetensorsInvalid,
        MissingBlocks,
        RangeNotSatisfiable,
        CapacityExceeded,
        Unauthorized,
        UpstreamUnavailable,
        UpstreamTimeout,
        Forbidden,
        TooManyRequests,
        Overloaded,
    )
}
_BY_STATUS: dict[int, type[CachenetError]] = {
    404: NotFound,
    409: IntegrityError,
    416: RangeNotSatisfiable,
    422: BadInput,
    401: Unauthorized,
    403: Forbidden,
    429: TooManyRequests,
    507: CapacityExceeded,
    502: UpstreamUnavailable,
    503: UpstreamUnavailable,
    504: UpstreamTimeout,
}


def error_from_payload(status: int, payload: object) -> CachenetError:
    """Rebuild the typed error a server sent as `{"error": ..., "message": ...}`."""
    name = message = None
    attrs: dict[str, Any] = {}
    if isinstance(payload, dict):
        name = payload.get("error")
        message = payload.get("message")
        attrs = {
            k: v
            for k, v in payload.items()
            if k not in ("error", "message") and isinstance(k, str) and k.isidentifier()
        }
    cls = _BY_NAME.get(str(name)) or _BY_STATUS.get(status, CachenetError)
    attrs.pop("status_code", None)  # a relayed error already carries the first hop's status
    return cls(str(message or f"HTTP {status}"), status_code=status, **attrs)
