"""The busbw a topology should give: the slowest hop of the ring, from the doctor's facts."""

from __future__ import annotations

import pytest

from clusterkit.node.facts import Unavailable
from clusterkit.workloads.expect import expected_busbw
from tests.factories import (
    cpu_only_node,
    healthy_gpu_node,
    make_ib_port,
    make_network,
    make_nic,
    with_all_gpus,
    with_env,
    with_gpu,
    with_section,
)


def test_one_hgx_node_is_bounded_by_nvlink_4_times_18_links() -> None:
    expectation = expected_busbw({"n1": healthy_gpu_node(8)}, {"n1": 8}, "nccl")
    assert expectation.busbw_gbs == pytest.approx(450.0)
    assert "18 active links x 25 GB/s = 450 GB/s per GPU" in expectation.explain()


def test_two_hgx_nodes_are_bounded_by_their_eight_ndr_ports() -> None:
    nodes = {"n1": healthy_gpu_node(8), "n2": healthy_gpu_node(8)}
    expectation = expected_busbw(nodes, {"n1": 8, "n2": 8}, "nccl")
    assert expectation.busbw_gbs == pytest.approx(400.0)  # 8 x 400 Gb/s / 8
    assert expectation.bottleneck is not None and expectation.bottleneck.name == "InfiniBand x8"


def test_a_node_with_a_port_down_sets_the_pace_of_the_whole_ring() -> None:
    ports = [make_ib_port(i) for i in range(8)]
    ports[3] = make_ib_port(3, state="DOWN", phys_state="Disabled")
    degraded = with_section(healthy_gpu_node(8), "network", ib_ports=ports)
    expectation = expected_busbw({"n1": healthy_gpu_node(8), "n2": degraded}, {"n1": 8, "n2": 8}, "nccl")
    assert expectation.busbw_gbs == pytest.approx(350.0)
    assert expectation.bottleneck is not None and expectation.bottleneck.host == "n2"


def test_without_nvlink_the_pcie_link_bounds_a_node_and_a_downgrade_shows() -> None:
    node = with_all_gpus(healthy_gpu_node(2), nvlinks=Unavailable("Not Supported"))
    assert expected_busbw({"n1": node}, {"n1": 2}, "nccl").busbw_gbs == pytest.approx(3.938 * 16)
    narrowed = with_gpu(node, 1, pcie_gen_max=4, pcie_width_max=8)
    assert expected_busbw({"n1": narrowed}, {"n1": 2}, "nccl").busbw_gbs == pytest.approx(1.969 * 8)


def test_nccl_without_infiniband_and_gloo_use_the_ethernet_interface() -> None:
    eth = make_network(0, nics=[make_nic("lo"), make_nic("eth0", speed_mbps=25000)])
    nodes = {n: with_section(healthy_gpu_node(1), "network", **{"nics": eth.nics, "ib_ports": []})
             for n in ("n1", "n2")}
    assert expected_busbw(nodes, {"n1": 1, "n2": 1}, "nccl").busbw_gbs == pytest.approx(3.125)
    ib_nodes = {n: healthy_gpu_node(8) for n in ("n1", "n2")}
    # gloo speaks TCP: the 100 Gb/s Ethernet interface, not the InfiniBand ports.
    assert expected_busbw(ib_nodes, {"n1": 1, "n2": 1}, "gloo").busbw_gbs == pytest.approx(12.5)
    disabled = {n: with_env(healthy_gpu_node(8), NCCL_IB_DISABLE="1") for n in ("n1", "n2")}
    assert expected_busbw(disabled, {"n1": 1, "n2": 1}, "nccl").busbw_gbs == pytest.approx(12.5)


def test_the_socket_interface_setting_picks_the_interface() -> None:
    nics = [make_nic("lo"), make_nic("eth0", speed_mbps=1000), make_nic("ens5", speed_mbps=100000,
                                                                         ipv4=["10.1.0.11"])]
    node = with_env(with_section(cpu_only_node(), "network", nics=nics), GLOO_SOCKET_IFNAME="eth0")
    expectation = expected_busbw({"n1": node, "n2": node}, {"n1": 1, "n2": 1}, "gloo")
    assert expectation.busbw_gbs == pytest.approx(0.125)
    assert "eth0 at 1000 Mb/s" in expectation.explain()


def test_missing_facts_give_no_expectation_and_say_why() -> None:
    expectation = expected_busbw({"n1": Unavailable("no answer within 30s")}, {"n1": 1, "n2": 1}, "gloo")
    assert expectation.busbw_gbs is None
    assert expectation.explain() == "no expectation: n1: no answer within 30s"
    cpu = expected_busbw({"n1": cpu_only_node()}, {"n1": 2}, "gloo")
    assert cpu.busbw_gbs is None and "loopback" in cpu.reason
