"""The head's side of a relay, without a network: what a hop cut off is credited with, and the head's own
file judged before any copy of it is blamed on the network."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from clusterkit.cluster.remote.transfer import HopEvent, RelayOptions, RemoteFile, _RelayRun, _source_problem


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "source.bin"
    path.write_bytes(os.urandom(3_000_000))
    return path


def test_a_hop_cut_off_mid_stream_is_credited_with_what_it_reported_not_the_whole_file() -> None:
    # issue 19, M7: bytes sent were counted as meant, not as received (148.1 MB of an 86.1 MB archive)
    run = _RelayRun(["n1", "n2"], 10_000_000, RelayOptions(hop_ssh=("ssh",)), None)
    for host, position in (("n1", 4_000_000), ("n2", 3_000_000), ("n1", 6_000_000)):
        run.handle(HopEvent(host, "progress", position, None, 0.0))
    run.handle(HopEvent("n2", "lost", 6_000_000, "Connection reset", 0.0))  # n1's word about n2: not n2's bytes
    run.handle(HopEvent("n1", "done", 10_000_000, None, 0.0))
    results = run.results()
    assert (results["n1"].ok, results["n1"].value) == (True, 10_000_000)
    assert (results["n2"].ok, results["n2"].value, results["n2"].error) == (False, 3_000_000, "Connection reset")


def test_the_heads_own_file_is_judged_before_it_is_blamed_on_the_network(source: Path) -> None:
    # issue 19, M4: a truncated archive on the head went three rounds as "the stream ended ... (upstream lost)"
    data = source.read_bytes()
    whole = RemoteFile("/x/file.bin", len(data), hashlib.sha256(data).hexdigest())
    assert _source_problem(source, whole, rehash=True) is None
    longer = RemoteFile("/x/file.bin", len(data) + 1000, whole.sha256)
    error, fix = _source_problem(source, longer, rehash=False) or ("", "")
    assert fix == f"replace {source} with a whole copy (for an env archive: pack it again), then rerun"
    assert error == (f"the head's own {source} is 3.0 MB (3000000 bytes), not 3.0 MB (3001000 bytes) as expected: "
                     "no copy of it can be right")
    changed = RemoteFile("/x/file.bin", len(data), "0" * 64)
    assert _source_problem(source, changed, rehash=False) is None  # the size alone: cheap, before every push
    error, _ = _source_problem(source, changed, rehash=True) or ("", "")
    assert error.endswith("does not have the sha256 expected (it changed since its checksum was taken): no copy "
                          "of it can be right")
