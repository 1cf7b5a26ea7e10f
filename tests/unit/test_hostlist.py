"""Host lists folded as Slurm and dshbak -c write them, and read back."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clusterkit.hostlist import compress, expand


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
])
def test_names_fold_into_ranges(names: list[str], folded: str) -> None:
    assert compress(names) == folded


def test_a_folded_list_reads_back() -> None:
    assert expand("node[01-03,07],login,10.0.0.[11-12]") == ["node01", "node02", "node03", "node07", "login",
                                                              "10.0.0.11", "10.0.0.12"]


@pytest.mark.parametrize("bad", ["node[1-x]", "node[1", "node]1["])
def test_a_malformed_list_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="not a"):
        expand(bad)


@given(st.lists(st.tuples(st.sampled_from(["node", "gpu-", "10.1.0.", "a1b"]), st.integers(0, 300),
                          st.sampled_from([0, 2, 3])), min_size=1, max_size=40))
def test_folding_keeps_every_name_and_nothing_else(parts: list[tuple[str, int, int]]) -> None:
    names = [f"{prefix}{str(number).zfill(width)}" for prefix, number, width in parts]
    assert sorted(expand(compress(names))) == sorted(set(names))
