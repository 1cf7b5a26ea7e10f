"""Which hostfile entry is this machine: decided once, from the addresses names resolve to."""

from __future__ import annotations

import socket

from clusterkit.core.launchsite import launch_place, local_addresses, local_entries

#: A name no resolver knows (RFC 6761), and an address no machine here has (TEST-NET-1, RFC 5737).
ELSEWHERE = ["no-such-node.invalid", "192.0.2.7"]


def test_loopback_names_and_this_hosts_own_name_are_this_machine() -> None:
    names = ["localhost", "127.0.0.1", socket.gethostname(), *ELSEWHERE]
    assert local_entries(names) == ["localhost", "127.0.0.1", socket.gethostname()]


def test_an_address_of_one_of_this_machines_interfaces_is_this_machine() -> None:
    mine = sorted(a for a in local_addresses() if "." in a and not a.startswith("127."))
    if mine:
        assert local_entries([mine[0], *ELSEWHERE]) == [mine[0]]


def test_a_single_host_that_is_this_machine_launches_here_without_ssh() -> None:
    assert launch_place(["localhost"]).local_only
    place = launch_place(["192.0.2.7"])
    assert (place.entry, place.local_only, place.in_hostfile) == (None, False, False)
    assert place.name == socket.gethostname()  # a login node reports under its own name
    both = launch_place(["localhost", "192.0.2.7"])
    assert (both.entry, both.local_only) == ("localhost", False)
