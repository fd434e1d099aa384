"""Latency model: Shannon wireless rates, backhaul transfer times, who can serve a request in time.

Latency of delivering model i (size S_i bytes) to user k from server n:

    t(k, i, n) = 8 S_i / r_k + [n != s(k)] * S_i * b(n, s(k)) + overhead_s

where s(k) is k's serving server, r_k the downlink rate of s(k) to k (Shannon:
r = W log2(1 + P g |h|^2 / (N0 W)), path loss 128.1 + 37.6 log10 d[km] dB, |h|^2 ~ Exp(1)
under Rayleigh fading, seeded), and b(n, m) the seconds per byte along the backhaul path
from n to m that minimises the total transfer time (sum of 8 / rate over the links, i.e.
store-and-forward), computed with Dijkstra in networkx. Unreachable servers get inf.
"""

import math
from typing import Any, Final

import networkx as nx
import numpy as np

from placement.topology import Topology

__all__ = (
    "MIN_DISTANCE_M",
    "backhaul_s_per_byte",
    "eligible_mask",
    "latency_matrix",
    "path_loss_db",
    "wireless_rates",
)

MIN_DISTANCE_M: Final = 1.0  # the path-loss model is meaningless at d -> 0
# Relative slack when comparing a latency with its requirement, so that equality counts as met.
_LATENCY_RTOL: Final = 1e-9


def path_loss_db(distance_m: np.ndarray | float) -> np.ndarray:
    """Path loss 128.1 + 37.6 log10(d in km), in dB."""
    d_km = np.maximum(np.asarray(distance_m, dtype=float), MIN_DISTANCE_M) / 1000.0
    return np.asarray(128.1 + 37.6 * np.log10(d_km))


def wireless_rates(topology: Topology, *, seed: int | None = None) -> np.ndarray:
    """Downlink rate in bit/s from each user's serving server to the user (order of `users`)."""
    by_id = {s.id: s for s in topology.servers}
    rng = np.random.default_rng(seed)
    rates = np.empty(len(topology.users))
    for k, user in enumerate(topology.users):
        server = by_id[user.server]
        radio = server.radio
        gain = 10.0 ** (-path_loss_db(math.dist(user.position, server.position)) / 10.0)
        if radio.rayleigh:
            gain = gain * rng.exponential(1.0)
        power_w = 10.0 ** ((radio.tx_power_dbm - 30.0) / 10.0)
        noise_w = 10.0 ** ((radio.noise_dbm_per_hz - 30.0) / 10.0) * radio.bandwidth_hz
        rates[k] = radio.bandwidth_hz * math.log2(1.0 + power_w * float(gain) / noise_w)
    return rates


def backhaul_s_per_byte(topology: Topology) -> np.ndarray:
    """Matrix (servers x servers) of seconds per byte on the min-transfer-time backhaul path."""
    ids = topology.server_ids()
    index = {s: i for i, s in enumerate(ids)}
    out = np.full((len(ids), len(ids)), np.inf)
    np.fill_diagonal(out, 0.0)
    for src, lengths in nx.all_pairs_dijkstra_path_length(topology.graph, weight="s_per_byte"):
        if src not in index:
            continue
        for dst, value in lengths.items():
            if dst in index:
                out[index[src], index[dst]] = value
    return out


def latency_matrix(topology: Topology, model_sizes: np.ndarray, *, seed: int | None = None) -> np.ndarray:
    """Array (users x models x servers) of delivery latencies in seconds (inf if unreachable)."""
    sizes = np.asarray(model_sizes, dtype=float)
    rates = wireless_rates(topology, seed=seed)
    per_byte = _per_byte(topology, rates)
    delays: np.ndarray[Any, np.dtype[Any]] = sizes[None, :, None] * per_byte[:, None, :] + topology.overhead_s
    return delays


def eligible_mask(
    topology: Topology,
    model_sizes: np.ndarray,
    requirements_s: np.ndarray,
    *,
    rates: np.ndarray,
) -> np.ndarray:
    """Boolean (users x models x servers): server n delivers model i to user k within T_{k,i}."""
    sizes = np.asarray(model_sizes, dtype=float)
    per_byte = _per_byte(topology, rates)
    latency = sizes[None, :, None] * per_byte[:, None, :] + topology.overhead_s
    limit = np.asarray(requirements_s, dtype=float) * (1.0 + _LATENCY_RTOL)
    return np.asarray(latency <= limit[:, :, None])


def _per_byte(topology: Topology, rates: np.ndarray) -> np.ndarray:
    """Seconds per byte (users x servers): wireless hop plus backhaul from n to the serving one."""
    index = {s: i for i, s in enumerate(topology.server_ids())}
    serving = np.array([index[u.server] for u in topology.users], dtype=np.int64)
    backhaul = backhaul_s_per_byte(topology)
    with np.errstate(divide="ignore"):
        wireless = np.where(rates > 0, 8.0 / np.maximum(rates, 1e-300), np.inf)
    if len(serving) == 0:
        return np.zeros((0, len(index)))
    return np.asarray(wireless[:, None] + backhaul[:, serving].T)
