"""NICs and RDMA ports come from sysfs in its real layout; addresses from `ip -j addr` or /proc."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clusterkit.core.facts_codec import from_jsonable
from clusterkit.node.collect.network import (
    collect_network,
    parse_ib_rate,
    parse_ib_state,
    parse_if_inet6,
    parse_ip_addr_json,
    parse_ipv4_from_proc,
    read_ib_ports,
    read_nics,
)
from clusterkit.node.collect.node import CollectOptions
from clusterkit.node.facts import NetworkFacts, Unavailable, known, to_jsonable

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
EIGHT_IB = FIXTURES / "synthetic-sysfs-8ib-bond"
IB_DOWN = FIXTURES / "synthetic-sysfs-ib-down"
ROCE = FIXTURES / "synthetic-sysfs-roce"
PROC = FIXTURES / "synthetic-proc-gpu-node"


# ------------------------------------------------------------------------------------ parsing units


@pytest.mark.parametrize(("text", "state"), [
    ("4: ACTIVE", "ACTIVE"), ("1: DOWN", "DOWN"), ("5: LinkUp", "LinkUp"), ("3: Disabled", "Disabled"),
    ("2: INIT\n", "INIT"), ("ACTIVE", "ACTIVE"), ("", ""),
])
def test_port_states_drop_the_numeric_prefix(text: str, state: str) -> None:
    assert parse_ib_state(text) == state


@pytest.mark.parametrize(("text", "gbps"), [
    ("200 Gb/sec (4X HDR)", 200.0), ("400 Gb/sec (4X NDR)", 400.0), ("2.5 Gb/sec (1X SDR)", 2.5),
    ("100 Gb/sec (4X EDR)\n", 100.0),
])
def test_rates_become_gigabits(text: str, gbps: float) -> None:
    assert parse_ib_rate(text) == gbps


def test_an_unknown_rate_is_a_reason() -> None:
    assert isinstance(parse_ib_rate("invalid"), Unavailable)


# ------------------------------------------------------------------------------ synthetic sysfs


def test_eight_active_hdr_ports_four_per_numa_node() -> None:
    ports = read_ib_ports(str(EIGHT_IB))
    assert known(ports) and len(ports) == 8
    assert [p.device for p in ports] == [f"mlx5_{i}" for i in range(8)]
    assert {(p.port, p.state, p.phys_state, p.link_layer) for p in ports} == {
        (1, "ACTIVE", "LinkUp", "InfiniBand")}
    assert {p.rate for p in ports} == {"200 Gb/sec (4X HDR)"}
    assert {p.rate_gbps for p in ports} == {200.0}
    assert [p.numa_node for p in ports] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert [p.netdevs for p in ports] == [[f"ib{i}"] for i in range(8)]


def test_nic_kinds_on_the_eight_hca_node() -> None:
    nics = read_nics(str(EIGHT_IB))
    assert known(nics)
    kinds = {nic.name: nic.kind for nic in nics}
    assert kinds["lo"] == "loopback"
    assert kinds["bond0"] == "virtual"
    assert kinds["docker0"] == "bridge"
    assert kinds["ens1f0np0"] == kinds["ens1f1np1"] == "physical"
    assert {kinds[f"ib{i}"] for i in range(8)} == {"ipoib"}
    by_name = {nic.name: nic for nic in nics}
    assert by_name["ib5"].numa_node == 1 and by_name["ib5"].speed_mbps == 200000
    assert by_name["ib5"].mtu == 4092 and by_name["ib5"].operstate == "up"
    assert by_name["bond0"].speed_mbps == 200000 and by_name["bond0"].mtu == 9000
    assert isinstance(by_name["bond0"].numa_node, Unavailable)
    assert "virtual interface" in by_name["bond0"].numa_node.reason
    assert isinstance(by_name["docker0"].speed_mbps, Unavailable)  # "-1": no link
    assert "-1" in by_name["docker0"].speed_mbps.reason


def test_a_port_down_and_disabled() -> None:
    [port] = read_ib_ports(str(IB_DOWN))  # type: ignore[misc]
    assert (port.device, port.state, port.phys_state) == ("mlx5_0", "DOWN", "Disabled")
    assert port.netdevs == ["ib0"]
    nics = {nic.name: nic for nic in read_nics(str(IB_DOWN))}  # type: ignore[union-attr]
    assert nics["ib0"].operstate == "down" and nics["ib0"].kind == "ipoib"
    assert isinstance(nics["ib0"].speed_mbps, Unavailable)


def test_a_roce_port_is_an_rdma_port_on_ethernet() -> None:
    [port] = read_ib_ports(str(ROCE))  # type: ignore[misc]
    assert (port.state, port.link_layer, port.rate_gbps, port.numa_node) == ("ACTIVE", "Ethernet", 100.0, 1)
    assert port.netdevs == ["ens2f0np0"]
    nics = {nic.name: nic for nic in read_nics(str(ROCE))}  # type: ignore[union-attr]
    assert nics["ens2f0np0"].kind == "physical" and nics["ens2f0np0"].speed_mbps == 100000


def test_several_ports_on_one_function_get_their_own_netdev_by_dev_port(tmp_path: Path) -> None:
    # mlx4-style: one PCI function, two ports, ib0 (dev_port 0) and ib1 (dev_port 1).
    pci = tmp_path / "devices" / "pci0000:00" / "0000:00:02.0" / "0000:03:00.0"
    (pci / "numa_node").parent.mkdir(parents=True)
    (pci / "numa_node").write_text("0\n")
    hca = pci / "infiniband" / "mlx4_0"
    for port in (1, 2):
        (hca / "ports" / str(port)).mkdir(parents=True)
        for name, value in (("state", "4: ACTIVE"), ("phys_state", "5: LinkUp"),
                            ("rate", "40 Gb/sec (4X QDR)"), ("link_layer", "InfiniBand")):
            (hca / "ports" / str(port) / name).write_text(value + "\n")
        (pci / "net" / f"ib{port - 1}").mkdir(parents=True)
        (pci / "net" / f"ib{port - 1}" / "dev_port").write_text(f"{port - 1}\n")
    (hca / "device").symlink_to("../../../0000:03:00.0")
    (tmp_path / "class" / "infiniband").mkdir(parents=True)
    (tmp_path / "class" / "infiniband" / "mlx4_0").symlink_to(
        "../../devices/pci0000:00/0000:00:02.0/0000:03:00.0/infiniband/mlx4_0")
    ports = read_ib_ports(str(tmp_path))
    assert known(ports)
    assert [(p.port, p.netdevs) for p in ports] == [(1, ["ib0"]), (2, ["ib1"])]


def test_no_infiniband_class_means_no_rdma_ports(tmp_path: Path) -> None:
    assert read_ib_ports(str(tmp_path)) == []


def test_no_net_class_is_a_reason(tmp_path: Path) -> None:
    assert isinstance(read_nics(str(tmp_path)), Unavailable)


# ---------------------------------------------------------------------------------------- addresses


IP_JSON = json.dumps([
    {"ifindex": 1, "ifname": "lo", "addr_info": [
        {"family": "inet", "local": "127.0.0.1", "prefixlen": 8},
        {"family": "inet6", "local": "::1", "prefixlen": 128}]},
    {"ifindex": 7, "ifname": "bond0", "addr_info": [
        {"family": "inet", "local": "10.10.0.11", "prefixlen": 16, "broadcast": "10.10.255.255"},
        {"family": "inet", "local": "10.10.0.99", "prefixlen": 16, "secondary": True},
        {"family": "inet6", "local": "fe80::ba3f:d2ff:fe11:2230", "prefixlen": 64, "scope": "link"}]},
    {"ifindex": 9, "ifname": "docker0", "addr_info": []},
])


def test_ip_json_gives_addresses_with_prefix_per_interface() -> None:
    addresses = parse_ip_addr_json(IP_JSON)
    assert known(addresses)
    assert addresses["bond0"] == (["10.10.0.11/16", "10.10.0.99/16"], ["fe80::ba3f:d2ff:fe11:2230/64"])
    assert addresses["lo"] == (["127.0.0.1/8"], ["::1/128"])
    assert addresses["docker0"] == ([], [])


def test_addresses_land_on_their_nics() -> None:
    addresses = parse_ip_addr_json(IP_JSON)
    assert known(addresses)
    nics = {nic.name: nic for nic in read_nics(str(EIGHT_IB), addresses)}  # type: ignore[union-attr]
    assert nics["bond0"].ipv4 == ["10.10.0.11/16", "10.10.0.99/16"]
    assert nics["ib3"].ipv4 == [] and nics["ib3"].ipv6 == []


def test_ipv6_fallback_reads_if_inet6() -> None:
    found = parse_if_inet6((PROC / "net" / "if_inet6").read_text())
    assert found["lo"] == ["::1/128"]
    assert found["bond0"] == ["fd0a:a::b/64", "fe80::ba3f:d2ff:fe11:2230/64"]
    assert found["docker0"] == ["fe80::42:acff:fe11:1/64"]


def test_ipv4_fallback_pairs_local_addresses_with_connected_routes() -> None:
    found = parse_ipv4_from_proc((PROC / "net" / "fib_trie").read_text(), (PROC / "net" / "route").read_text())
    assert found == {"bond0": ["10.10.0.11/16"], "lo": ["127.0.0.1/8"], "docker0": ["172.17.0.1/16"],
                     "ib0": ["192.168.1.11/24"]}


def test_without_ip_the_proc_fallback_is_used_and_named() -> None:
    facts = collect_network(CollectOptions(), sysfs_root=str(EIGHT_IB), proc_root=str(PROC),
                            ip_command=["/nonexistent/ip", "-j", "addr"])
    assert isinstance(facts.addresses_source, str)
    assert "best effort" in facts.addresses_source and "/nonexistent/ip not found" in facts.addresses_source
    nics = {nic.name: nic for nic in facts.nics}  # type: ignore[union-attr]
    assert nics["bond0"].ipv4 == ["10.10.0.11/16"]
    assert nics["ib0"].ipv4 == ["192.168.1.11/24"]
    assert "fd0a:a::b/64" in nics["bond0"].ipv6


def test_without_ip_or_proc_the_addresses_are_unavailable_with_both_reasons(tmp_path: Path) -> None:
    facts = collect_network(CollectOptions(), sysfs_root=str(EIGHT_IB), proc_root=str(tmp_path),
                            ip_command=["/nonexistent/ip"])
    assert isinstance(facts.addresses_source, Unavailable)
    assert "/nonexistent/ip not found" in facts.addresses_source.reason
    assert "if_inet6" in facts.addresses_source.reason
    assert known(facts.nics) and len(facts.nics) == 13  # lo, 8 x ib, 2 x ens, bond0, docker0


def test_an_ip_without_json_support_falls_back(tmp_path: Path) -> None:
    old_ip = tmp_path / "ip"
    old_ip.write_text('#!/bin/sh\necho \'Option "-j" is unknown, try "ip -help".\' >&2\nexit 255\n')
    old_ip.chmod(0o755)
    facts = collect_network(CollectOptions(), sysfs_root=str(ROCE), proc_root=str(PROC),
                            ip_command=[str(old_ip), "-j", "addr"])
    assert isinstance(facts.addresses_source, str) and "exited 255" in facts.addresses_source


# ------------------------------------------------------------------------------- the real machine


def test_real_sysfs_lists_loopback_with_its_addresses() -> None:
    facts = collect_network(CollectOptions())
    assert known(facts.nics)
    nics = {nic.name: nic for nic in facts.nics}
    assert nics["lo"].kind == "loopback"
    assert isinstance(nics["lo"].speed_mbps, Unavailable)  # the kernel answers EINVAL for lo
    assert isinstance(nics["lo"].numa_node, Unavailable)
    if shutil.which("ip"):
        assert facts.addresses_source == "ip -j addr show"
        assert "127.0.0.1/8" in nics["lo"].ipv4
    assert known(facts.ib_ports)


@pytest.mark.skipif(not shutil.which("ip"), reason="no iproute2 here")
def test_the_proc_fallback_agrees_with_ip_on_this_machine() -> None:
    with_ip = collect_network(CollectOptions())
    without = collect_network(CollectOptions(), ip_command=["/nonexistent/ip"])
    assert known(with_ip.nics) and known(without.nics)
    # A namespace cluster's links come and go between the two reads while another test process runs one.
    for a, b in zip(*([nic for nic in nics if not nic.name.startswith("ckt")]
                      for nics in (with_ip.nics, without.nics)), strict=True):
        assert sorted(a.ipv6) == sorted(b.ipv6), a.name
        assert set(b.ipv4) <= set(a.ipv4), a.name


@pytest.mark.skipif(not shutil.which("ip"), reason="no iproute2 here")
def test_real_ip_json_parses() -> None:
    output = subprocess.run(["ip", "-j", "addr", "show"], capture_output=True, text=True, check=True).stdout
    addresses = parse_ip_addr_json(output)
    assert known(addresses) and "lo" in addresses


def test_network_facts_survive_the_json_round_trip() -> None:
    facts = collect_network(CollectOptions(), sysfs_root=str(EIGHT_IB), proc_root=str(PROC))
    assert from_jsonable(NetworkFacts, json.loads(json.dumps(to_jsonable(facts)))) == facts


# ------------------------------------------------------------------------------------------ fuzzing


@given(st.text())
def test_malformed_address_and_sysfs_text_never_raises(text: str) -> None:
    parse_ip_addr_json(text)
    parse_if_inet6(text)
    parse_ipv4_from_proc(text, text)
    parse_ib_state(text)
    parse_ib_rate(text)


JSONISH = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                       lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
                           st.sampled_from(["ifname", "addr_info", "family", "local", "prefixlen", "x"]),
                           inner, max_size=4), max_leaves=12)


@given(JSONISH)
def test_any_json_shape_from_ip_never_raises(data: object) -> None:
    parse_ip_addr_json(json.dumps(data))


ROUTE_AND_TRIE = [*(PROC / "net" / "route").read_text().splitlines(),
                  *(PROC / "net" / "fib_trie").read_text().splitlines(), "eth0\tZZZZ\t0\t0\t0\t0\t0\t0"]


@given(st.lists(st.sampled_from(ROUTE_AND_TRIE), max_size=40), st.lists(st.sampled_from(ROUTE_AND_TRIE),
                                                                         max_size=10))
def test_shuffled_fib_trie_and_route_lines_never_raise(trie: list[str], route: list[str]) -> None:
    parse_ipv4_from_proc("\n".join(trie), "\n".join(route))
