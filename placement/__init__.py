"""The placement controller: topology, latency model, TrimCaching and baselines, replacement policies."""

__all__: tuple[str, ...] = ()
