"""Host lists folded as Slurm and dshbak -c write them, and read back (ClusterShell's NodeSet underneath)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clusterkit.core.hostlist import MAX_NAMES, compress, expand

#: ``scontrol show hostnames`` as a function.
Hostnames = Callable[[str], list[str]]
RACKS = [f"rack{rack}-n{node:02d}" for rack in (1, 2) for node in range(1, 9)]


@pytest.mark.parametrize(("names", "folded"), [
    (["node1", "node2", "node3"], "node[1-3]"),
    ([f"node{i:02d}" for i in range(1, 65)], "node[01-64]"),
    (["node09", "node10", "node11"], "node[09-11]"),
    (["node9", "node10", "node11"], "node[9-11]"),
    (["node1", "node3", "node4", "node7"], "node[1,3-4,7]"),
    (["10.0.0.11", "10.0.0.12", "10.0.0.20"], "10.0.0.[11-12,20]"),
    (["login", "node1"], "login,node1"),
    (["gpu1", "node2", "gpu2"], "gpu[1-2],node2"),
    (["node1", "node1"], "node1"),
    (["cluster"], "cluster"),
    # several families, sorted: Slurm orders a step's nodes by the allocation, never by --nodelist
    (["gpu01", "gpu02", "gpu03", "gpu04", "cpu1", "cpu2"], "cpu[1-2],gpu[01-04]"),
    (["node3", "node1", "node2"], "node[1-3]"),
    (RACKS, "rack[1-2]-n[01-08]"),
    ([f"10.0.{subnet}.{host}" for subnet in (1, 2) for host in (11, 12)], "10.0.[1-2].[11-12]"),
    (["node1", "node01", "node001"], "node[1,01,001]"),
])
def test_names_fold_into_ranges(names: list[str], folded: str) -> None:
    assert compress(names) == folded


@pytest.mark.parametrize(("names", "folded"), [
    (["rack1-n01", "rack2-n01"], "rack[1-2]-n[01]"),
    (["10.0.1.5", "10.0.2.5"], "10.0.[1-2].[5]"),
])
def test_a_folded_list_ends_in_a_bracket_as_slurm_needs(names: list[str], folded: str) -> None:
    assert compress(names) == folded


@pytest.mark.parametrize("names", [
    ["node1.example.com", "node2.example.com"],
    ["node1-ib", "node2-ib"],
    ["a1b", "a2b"],
])
def test_names_that_do_not_end_in_their_number_are_not_folded(names: list[str]) -> None:
    assert compress(names) == ",".join(names)


def test_a_folded_list_reads_back() -> None:
    assert expand("node[01-03,07],login,10.0.0.[11-12]") == ["node01", "node02", "node03", "node07", "login",
                                                              "10.0.0.11", "10.0.0.12"]


def test_comma_joined_families_read_back_in_the_order_written() -> None:
    assert expand("gpu[01-04],cpu[1-2]") == ["gpu01", "gpu02", "gpu03", "gpu04", "cpu1", "cpu2"]
    assert expand("node3,node1,node2,node1") == ["node3", "node1", "node2", "node1"]


def test_a_multi_dimensional_list_reads_back_rack_by_rack() -> None:
    assert expand("rack[1-2]-n[01-08]") == RACKS
    assert expand("rack1-n[01-08],rack2-n[01-08]") == RACKS


def test_items_are_split_at_whitespace_too_as_scontrol_does() -> None:
    assert expand(" node[1-2]  login,,gpu7 ") == ["node1", "node2", "login", "gpu7"]


@pytest.mark.parametrize("name", ["10.0.0.011", "node1.example.com", "fe80::1", "Node7", "gpu-07.ib.local",
                                  "node!x", "@group1", "user@host", "a^b"])
def test_a_name_without_brackets_keeps_its_spelling(name: str) -> None:
    assert expand(name) == [name]
    assert compress([name]) == name
    assert expand(compress([name, "node1"])) == sorted([name, "node1"])


@pytest.mark.parametrize("bad", ["node[1-x]", "node[1", "node]1[", "node]1", "node[]", "node[3-1]"])
def test_a_malformed_list_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="not a"):
        expand(bad)


@pytest.mark.parametrize("operated", ["node[1-4]!node2", "node[1-4]&node[2-3]", "node[1-2]^node2"])
def test_set_operators_are_refused_not_applied(operated: str) -> None:
    with pytest.raises(ValueError, match="set operation"):
        expand(operated)


def test_groups_are_names_not_looked_up() -> None:
    assert expand("@gpu[1-2]") == ["@gpu1", "@gpu2"]


@pytest.mark.parametrize("huge", ["node[1-999999999]", f"r[1-{MAX_NAMES}]-n[1-{MAX_NAMES}]"])
def test_a_list_of_more_names_than_slurm_takes_is_refused_at_once(huge: str) -> None:
    started = time.monotonic()
    with pytest.raises(ValueError, match="Slurm takes"):
        expand(huge)
    assert time.monotonic() - started < 1


@given(st.lists(st.tuples(st.sampled_from(["node", "gpu-", "10.1.0.", "a1b"]), st.integers(0, 300),
                          st.sampled_from([0, 2, 3])), min_size=1, max_size=40))
def test_folding_keeps_every_name_and_nothing_else(parts: list[tuple[str, int, int]]) -> None:
    names = [f"{prefix}{str(number).zfill(width)}" for prefix, number, width in parts]
    assert sorted(expand(compress(names))) == sorted(set(names))


_NUMBER = st.builds(lambda n, width: str(n).zfill(width), st.integers(0, 120), st.sampled_from([0, 2, 3]))
_TEXT = st.text(alphabet="abz-._:@%*/+=~", min_size=1, max_size=3)
#: Names of one to three numbered parts, as racks, IPs and FQDNs make them, some not ending in a number.
_NAMES = st.builds(lambda parts, tail: "".join(parts) + tail,
                   st.lists(st.builds(lambda text, number: text + number, _TEXT, _NUMBER), min_size=1, max_size=3),
                   st.sampled_from(["", "", "", ".example.com", "-ib"]))


@given(st.lists(_NAMES, min_size=1, max_size=30))
def test_multi_dimensional_and_odd_names_survive_folding(names: list[str]) -> None:
    assert sorted(expand(compress(names))) == sorted(set(names))


# -------------------------------------------------------------------- against Slurm's own parser

@pytest.fixture(scope="module")
def scontrol_hostnames(tmp_path_factory: pytest.TempPathFactory) -> Hostnames:
    """``scontrol show hostnames``, with a slurm.conf of its own (it reads one, never asking slurmctld)."""
    if shutil.which("scontrol") is None:
        pytest.skip("no scontrol here (apt-get install slurm-client)")
    conf = tmp_path_factory.mktemp("slurm") / "slurm.conf"
    conf.write_text("ClusterName=hostlist\nSlurmctldHost=localhost\nNodeName=node1 CPUs=1\n"
                    "PartitionName=debug Nodes=node1\n")

    def hostnames(expression: str) -> list[str]:
        done = subprocess.run(["scontrol", "show", "hostnames", expression], capture_output=True, text=True,
                              timeout=30, check=True, env={**os.environ, "SLURM_CONF": str(conf)})
        return done.stdout.split()

    return hostnames


@pytest.mark.parametrize("names", [
    RACKS,
    ["gpu01", "gpu02", "gpu03", "gpu04", "cpu1", "cpu2"],
    ["rack1-n01", "rack2-n01", "rack1-n02"],
    [f"10.0.{subnet}.{host}" for subnet in (1, 2, 4) for host in (11, 12, 30)],
    ["node1.example.com", "node2.example.com", "login", "node09", "node10", "node1", "node01"],
])
def test_slurm_reads_every_folded_list_as_the_same_names(names: list[str], scontrol_hostnames: Hostnames) -> None:
    assert sorted(scontrol_hostnames(compress(names))) == sorted(set(names))


@settings(max_examples=40, deadline=None)
@given(names=st.lists(st.from_regex(r"[a-z]{1,3}(-?[a-z]{1,2}[0-9]{1,3}){1,3}", fullmatch=True), min_size=1,
                      max_size=12))
def test_slurm_reads_folded_multi_dimensional_names(names: list[str], scontrol_hostnames: Hostnames) -> None:
    assert sorted(scontrol_hostnames(compress(names))) == sorted(set(names))


@pytest.mark.parametrize("written", [
    "gpu[01-04],cpu[1-2]", "node3,node[1-2]", "rack[1-2]-n[01-08]", "10.0.0.[11-12,20],login",
    "node[009-011],node[1,01]", "node1,node1",
])
def test_expansion_keeps_slurms_order(written: str, scontrol_hostnames: Hostnames) -> None:
    assert expand(written) == scontrol_hostnames(written)

