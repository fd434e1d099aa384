"""Prometheus metrics of an edge node (one registry per node)."""

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ("EdgeMetrics",)


class EdgeMetrics:
    """Every counter and gauge an edge node exports at /metrics."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.block_requests = Counter(
            "cachenet_edge_block_requests", "Block requests by result (hit, miss)", ["result"], registry=r
        )
        self.model_requests = Counter(
            "cachenet_edge_model_block_requests", "Block requests per model by result", ["model", "result"], registry=r
        )
        self.bytes_served = Counter("cachenet_edge_bytes_served", "Bytes of blocks handed to requesters", registry=r)
        self.bytes_fetched = Counter(
            "cachenet_edge_bytes_fetched",
            "Bytes fetched upstream by source kind (parent in a relay tree, peer, origin)",
            ["source"],
            registry=r,
        )
        self.upstream_errors = Counter(
            "cachenet_edge_upstream_errors",
            "Failed upstream fetches by source kind and reason",
            ["source", "reason"],
            registry=r,
        )
        self.evictions = Counter(
            "cachenet_edge_evictions", "Blocks evicted by the replacement policy", ["policy"], registry=r
        )
        self.singleflight_merged = Counter(
            "cachenet_edge_singleflight_merged", "Requests that joined an upstream fetch already under way", registry=r
        )
        self.not_admitted = Counter(
            "cachenet_edge_not_admitted", "Blocks served cut-through without being stored", registry=r
        )
        self.corrupt_blocks = Counter(
            "cachenet_edge_corrupt_blocks",
            "Stored blocks found corrupt and quarantined, by where (read, scrub)",
            ["found_by"],
            registry=r,
        )
        self.scrubbed_bytes = Counter("cachenet_edge_scrubbed_bytes", "Bytes re-verified by the scrubber", registry=r)
        self.egress_bytes = Counter(
            "cachenet_edge_egress_bytes",
            "Block bytes sent, by how (unicast, repair = unicast repair, multicast, multicast_repair)",
            ["kind"],
            registry=r,
        )
        self.multicast_sessions = Counter(
            "cachenet_edge_multicast_sessions",
            "Multicast sessions by how they ended (done, abandoned, failed)",
            ["result"],
            registry=r,
        )
        self.multicast_sessions_active = Gauge(
            "cachenet_edge_multicast_sessions_active", "Multicast sessions planned or sending", registry=r
        )
        self.multicast_members = Counter(
            "cachenet_edge_multicast_members",
            "Devices that joined a multicast session, by when (batched, late)",
            ["joined"],
            registry=r,
        )
        self.multicast_members_active = Gauge(
            "cachenet_edge_multicast_members_active", "Members of the running multicast sessions", registry=r
        )
        self.multicast_datagrams = Counter(
            "cachenet_edge_multicast_datagrams", "Datagrams sent to multicast groups", registry=r
        )
        self.multicast_dropped_bytes = Counter(
            "cachenet_edge_multicast_test_dropped_bytes",
            "Block bytes the sender dropped on purpose (test hook), by pass (multicast, multicast_repair)",
            ["kind"],
            registry=r,
        )
        self.multicast_nacks = Counter(
            "cachenet_edge_multicast_nacks", "Loss reports (NACKs) members sent after a session's main pass", registry=r
        )
        self.multicast_expected_bytes = Counter(
            "cachenet_edge_multicast_reported_expected_bytes",
            "Bytes members were to receive by multicast (reported)",
            registry=r,
        )
        self.multicast_missed_bytes = Counter(
            "cachenet_edge_multicast_reported_missed_bytes", "Bytes members reported lost and repaired", registry=r
        )
        self.multicast_loss = Gauge(
            "cachenet_edge_multicast_loss_ratio",
            "Share of multicast bytes the members reported lost (all sessions)",
            registry=r,
        )
        self.used_bytes = Gauge("cachenet_edge_used_bytes", "Bytes held by the store", registry=r)
        self.capacity_bytes = Gauge("cachenet_edge_capacity_bytes", "Storage capacity", registry=r)
        self.pinned_bytes = Gauge("cachenet_edge_pinned_bytes", "Bytes pinned by the placement plan", registry=r)
        self.sharing_saved_bytes = Gauge(
            "cachenet_edge_sharing_saved_bytes",
            "Bytes that storing every cached model whole would take, minus the bytes stored",
            registry=r,
        )
