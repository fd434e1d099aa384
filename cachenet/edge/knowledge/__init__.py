"""The edge node's knowledge side: shards cached under the node's budget, answers, forwarding."""

__all__: tuple[str, ...] = ()
