"""Messages that describe published models: the model list, what a revision shares with other models."""

import msgspec

__all__ = ("ModelEntry", "ModelList", "RevisionEntry", "SharingAnswer")


class RevisionEntry(msgspec.Struct, frozen=True):
    """One revision of a model: its commit id, bytes of its files, its base's commit, when it was published."""

    commit: str
    total_size: int
    base_commit: str | None
    created_at: float


class ModelEntry(msgspec.Struct, frozen=True):
    """A model: where it comes from, its tags (tag -> commit) and revisions, newest first.

    `shared_bytes`: bytes of the newest revision's blocks that other models also use.
    """

    name: str
    source: str
    upstream: str | None
    tags: dict[str, str]
    revisions: list[RevisionEntry]
    shared_bytes: int = 0


class ModelList(msgspec.Struct, frozen=True):
    """GET /v1/models."""

    models: list[ModelEntry]


class SharingAnswer(msgspec.Struct, frozen=True):
    """GET /v1/models/{name}/revisions/{revision}/sharing: bytes of the revision's blocks each other model uses."""

    revision: str
    shared_with: dict[str, int]
