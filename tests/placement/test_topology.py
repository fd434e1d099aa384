"""Topology files and the latency model: parsing, validation naming the field, rates, backhaul."""

import math
from pathlib import Path

import numpy as np
import pytest

from placement.errors import TopologyInvalid
from placement.latency import backhaul_s_per_byte, latency_matrix, path_loss_db, wireless_rates
from placement.topology import load_topology, parse_size, parse_topology, topology_to_dict

TOPOLOGIES = sorted((Path(__file__).parents[2] / "deploy" / "topologies").glob("*.yaml"))


def _base() -> dict[str, object]:
    return {
        "servers": [
            {"id": "a", "position": [0, 0], "capacity": "1GB"},
            {"id": "b", "position": [1000, 0], "capacity": "512MiB"},
            {"id": "c", "position": [2000, 0], "capacity": 10},
        ],
        "backhaul": [
            {"a": "a", "b": "b", "rate_bps": 8e6},
            {"a": "b", "b": "c", "rate_bps": 8e6},
            {"a": "a", "b": "c", "rate_bps": 1e6},
        ],
        "users": [
            {"id": "u1", "position": [900, 10]},
            {"id": "u2", "position": [10, 0], "server": "c"},
        ],
    }


@pytest.mark.parametrize("path", TOPOLOGIES, ids=lambda p: p.name)
def test_every_deploy_topology_loads(path: Path) -> None:
    topology = load_topology(path)
    assert topology.servers and topology.users
    assert all(s.capacity_bytes > 0 for s in topology.servers)
    assert np.all(np.isfinite(backhaul_s_per_byte(topology)))
    assert np.all(wireless_rates(topology, seed=0) > 0)


def test_demo_topology_has_ids_and_ports() -> None:
    topology = load_topology(Path(__file__).parents[2] / "deploy" / "topologies" / "demo.yaml")
    assert topology.server_ids() == ("edge-1", "edge-2", "edge-3")
    assert all(s.port is not None for s in topology.servers)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("4GB", 4 * 10**9),
        ("512MiB", 512 * 2**20),
        ("300 MB", 300 * 10**6),
        (1234, 1234),
        ("7", 7),
        ("1.5KiB", 1536),
    ],
)
def test_parse_size(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["4 GBs", "-1", True, None, "lots"])
def test_parse_size_rejects(text: object) -> None:
    with pytest.raises(TopologyInvalid, match="capacity"):
        parse_size(text)


def test_users_default_to_the_nearest_server() -> None:
    topology = parse_topology(_base())
    assert [u.server for u in topology.users] == ["b", "c"]


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda d: d["servers"][1].pop("capacity"), "servers[1].capacity"),
        (lambda d: d["servers"][0].update(position=[1]), "servers[0].position"),
        (lambda d: d["servers"][0].update(port=70000), "servers[0].port"),
        (lambda d: d["servers"][2].update(id="a"), "servers"),
        (lambda d: d["backhaul"][0].update(b="zz"), "backhaul[0].b"),
        (lambda d: d["backhaul"][1].update(rate_bps=0), "backhaul[1].rate_bps"),
        (lambda d: d["users"][0].update(server="zz"), "users[0].server"),
        (lambda d: d.update(radio={"bandwidth_hz": -1}), "radio.bandwidth_hz"),
        (lambda d: d.update(radio={"rayleigh": "yes"}), "radio.rayleigh"),
        (lambda d: d.pop("servers"), "servers"),
    ],
)
def test_invalid_topology_names_the_field(edit: object, field: str) -> None:
    data = _base()
    edit(data)  # type: ignore[operator]
    with pytest.raises(TopologyInvalid) as e:
        parse_topology(data)
    assert e.value.attrs["field"] == field


def test_load_topology_reports_bad_yaml(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("servers: [unclosed")
    with pytest.raises(TopologyInvalid, match="not valid YAML"):
        load_topology(path)
    with pytest.raises(TopologyInvalid, match="cannot read"):
        load_topology(tmp_path / "missing.yaml")


def test_round_trip_through_dict() -> None:
    topology = parse_topology(_base())
    assert parse_topology(topology_to_dict(topology)) == topology


def test_backhaul_uses_min_transfer_time_path() -> None:
    topology = parse_topology(_base())
    per_byte = backhaul_s_per_byte(topology)
    # a -> c: direct 8 / 1e6 = 8e-6 s/B, via b 2 * 8 / 8e6 = 2e-6 s/B
    assert per_byte[0, 2] == pytest.approx(2e-6)
    assert per_byte[0, 0] == 0.0


def test_disconnected_backhaul_gives_infinite_latency() -> None:
    data = _base()
    data["backhaul"] = [{"a": "a", "b": "b", "rate_bps": 8e6}]
    topology = parse_topology(data)
    latency = latency_matrix(topology, np.array([100.0]), seed=0)
    assert math.isinf(latency[0, 0, 2]) and math.isfinite(latency[0, 0, 0])


def test_wireless_rate_is_shannon_with_the_path_loss_model() -> None:
    data = _base()
    data["radio"] = {"bandwidth_hz": 1e6, "tx_power_dbm": 30, "noise_dbm_per_hz": -174}
    topology = parse_topology(data)
    rates = wireless_rates(topology)
    snr_db = 30 - float(path_loss_db(math.dist((900, 10), (1000, 0)))) - (-174 + 60)
    assert float(path_loss_db(1000.0)) == pytest.approx(128.1)
    assert rates[0] == pytest.approx(1e6 * math.log2(1 + 10 ** (snr_db / 10)))


def test_rayleigh_fading_is_seeded() -> None:
    data = _base()
    data["radio"] = {"rayleigh": True}
    topology = parse_topology(data)
    assert np.array_equal(wireless_rates(topology, seed=3), wireless_rates(topology, seed=3))
    assert not np.array_equal(wireless_rates(topology, seed=3), wireless_rates(topology, seed=4))
