"""System checks: /dev/shm, ulimits, disk space and where JIT caches live."""

from __future__ import annotations

import dataclasses

import pytest

from clusterkit.checks.system import human_bytes
from clusterkit.node.facts import DiskFacts, NodeFacts, SystemFacts, Unavailable
from tests.factories import (
    GIB,
    CheckCase,
    assert_case,
    assert_table_covers,
    cpu_only_node,
    fail,
    h100_fixture_node,
    healthy_gpu_node,
    limit,
    passes,
    skips,
    with_section,
)

MIB = 1024**2


def shm(total: int, gpus: int = 8, free: int | None = None) -> NodeFacts:
    facts = healthy_gpu_node(gpus)
    assert isinstance(facts.system, SystemFacts) and isinstance(facts.system.shm, DiskFacts)
    return with_section(facts, "system", shm=dataclasses.replace(facts.system.shm, total_bytes=total,
                                                                 free_bytes=total if free is None else free))


def limits(name: str, soft: int | None, hard: int | None = None, ib_ports: int | None = None) -> NodeFacts:
    return with_section(healthy_gpu_node(ib_ports=ib_ports), "system", limits=limit(name, soft, hard))


def disk(purpose: str, **changes: object) -> NodeFacts:
    facts = healthy_gpu_node()
    assert isinstance(facts.system, SystemFacts)
    disks = [dataclasses.replace(d, **changes) if d.purpose == purpose else d for d in facts.system.disks]
    return with_section(facts, "system", disks=disks)


CASES: list[CheckCase] = [
    fail("shm-too-small", "docker-default", lambda: shm(64 * MIB), "/dev/shm is 64 MiB, below the minimum 512 MiB",
         where="/dev/shm", fix_contains="docker run --shm-size=8g"),
    passes("shm-too-small", "half-of-ram", healthy_gpu_node),
    passes("shm-too-small", "cpu-node-4g", cpu_only_node),
    skips("shm-too-small", "no-shm", lambda: with_section(healthy_gpu_node(), "system",
                                                          shm=Unavailable("/dev/shm does not exist")), "/dev/shm"),
    fail("shm-full", "leftovers-fill-16g", lambda: shm(16 * GIB, free=100 * MIB),
         "/dev/shm has 100 MiB free of 16 GiB, below the minimum 512 MiB", where="/dev/shm"),
    passes("shm-full", "mostly-free", lambda: shm(16 * GIB, free=15 * GIB)),
    passes("shm-full", "small-is-the-other-check", lambda: shm(64 * MIB, free=0)),
    fail("shm-below-per-gpu", "4g-for-8-gpus", lambda: shm(4 * GIB), "/dev/shm is 4 GiB; 8 local ranks want 8 GiB "
         "(1 GiB each)", fix_contains="--shm-size=8g"),
    fail("shm-below-per-gpu", "slots-count", lambda: shm(2 * GIB, gpus=1), "4 local ranks", expected_gpus=4),
    passes("shm-below-per-gpu", "enough", healthy_gpu_node),
    passes("shm-below-per-gpu", "below-minimum-is-the-other-check", lambda: shm(64 * MIB)),
    skips("shm-below-per-gpu", "cpu-run", cpu_only_node, "CPU-only run", expected_gpus=2),
    fail("ulimit-memlock-ib", "64k-with-ib", lambda: limits("memlock", 65536), "max locked memory is 64 KiB on a node "
         "with 8 RDMA port(s); RDMA needs unlimited", fix_contains="* soft memlock unlimited"),
    passes("ulimit-memlock-ib", "unlimited", healthy_gpu_node),
    skips("ulimit-memlock-ib", "no-rdma", lambda: limits("memlock", 65536, ib_ports=0), "no RDMA ports"),
    fail("ulimit-memlock-low", "8m-without-ib", lambda: limits("memlock", 8 * MIB, ib_ports=0),
         "max locked memory is 8 MiB, not unlimited"),
    passes("ulimit-memlock-low", "unlimited", lambda: healthy_gpu_node(ib_ports=0)),
    skips("ulimit-memlock-low", "rdma-present", healthy_gpu_node, "ulimit-memlock-ib"),
    fail("ulimit-nofile-low", "h100-fixture", h100_fixture_node, "open files limit is 20000 (hard 20000), below 65536"),
    fail("ulimit-nofile-low", "soft-only", lambda: limits("nofile", 1024, 1048576), "1024",
         fix_contains="ulimit -n 65536"),
    passes("ulimit-nofile-low", "high", healthy_gpu_node),
    skips("ulimit-nofile-low", "limits-unread", lambda: with_section(
        healthy_gpu_node(), "system", limits=Unavailable("no resource module")), "no resource module"),
    fail("disk-space-low", "home-full", lambda: disk("home", mount_point="/home", free_bytes=3 * GIB),
         "only 3 GiB free on /home (home: /root), below 10 GiB", where="/home"),
    passes("disk-space-low", "plenty", healthy_gpu_node),
    skips("disk-space-low", "nothing-readable", lambda: with_section(healthy_gpu_node(), "system", disks=[])),
    fail("disk-cache-on-network-fs", "extensions-on-nfs", lambda: disk("torch_extensions", fstype="nfs4",
                                                                       mount_point="/root"),
         "torch_extensions cache /root/.cache/torch_extensions is on nfs4, shared by every node",
         fix_contains="echo 'TORCH_EXTENSIONS_DIR=/tmp/torch_extensions' >> ~/.deepspeed_env"),
    fail("disk-cache-on-network-fs", "triton-on-lustre", lambda: disk("triton_cache", fstype="lustre"),
         "triton_cache", fix_contains="TRITON_CACHE_DIR=/tmp/triton"),
    passes("disk-cache-on-network-fs", "local", healthy_gpu_node),
    skips("disk-cache-on-network-fs", "no-cache-dirs", lambda: with_section(healthy_gpu_node(), "system", disks=[]),
          "no JIT cache"),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_system_check(case: CheckCase) -> None:
    assert_case(case)


def test_every_system_check_has_a_failing_and_a_passing_case() -> None:
    assert_table_covers("system", CASES)


@pytest.mark.parametrize(("value", "text"), [(0, "0 B"), (65536, "64 KiB"), (64 * MIB, "64 MiB"),
                                              (int(1.5 * GIB), "1.5 GiB"), (2 * 1024**4, "2 TiB")])
def test_sizes_read_like_df(value: int, text: str) -> None:
    assert human_bytes(value) == text
