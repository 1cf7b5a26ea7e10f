"""NCCL_SOCKET_IFNAME selects interfaces exactly as NCCL documents."""

from __future__ import annotations

import pytest

from clusterkit.core.nccl import select_interfaces

NICS = ["lo", "eth0", "eth0.100", "eth1", "ib0", "docker0", "bond0"]


@pytest.mark.parametrize(
    ("spec", "selected"),
    [
        ("eth", ["eth0", "eth0.100", "eth1"]),
        ("eth0", ["eth0", "eth0.100"]),
        ("=eth0", ["eth0"]),
        ("ib,bond", ["ib0", "bond0"]),
        ("^docker,lo", ["eth0", "eth0.100", "eth1", "ib0", "bond0"]),
        ("^=eth0", ["lo", "eth0.100", "eth1", "ib0", "docker0", "bond0"]),
        ("ens", []),
    ],
)
def test_prefix_exact_and_exclude_forms(spec: str, selected: list[str]) -> None:
    assert select_interfaces(spec, NICS) == selected
