"""The local cluster launcher (`cachenet up`) and the demo's model generator."""

__all__: tuple[str, ...] = ()
