"""CPU, memory, NUMA, /dev/shm, ulimits and the disks a job writes to, from /proc, /sys and statvfs."""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clusterkit.node.collect import system
from clusterkit.node.collect.node import CollectOptions
from clusterkit.node.collect.system import (
    collect_system,
    disk_facts,
    disk_targets,
    find_mount,
    measure_disks,
    parse_cpuinfo,
    parse_meminfo,
    parse_mounts,
    read_limits,
    read_numa_nodes,
)
from clusterkit.node.facts import Unavailable, known

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
PROC = FIXTURES / "synthetic-proc-gpu-node"
SYSFS_2_SOCKETS = FIXTURES / "synthetic-sysfs-8ib-bond"
GIB = 1 << 30


# ---------------------------------------------------------------------------------- synthetic /proc


def test_cpu_model_and_logical_cpus_come_from_cpuinfo() -> None:
    model, count = parse_cpuinfo((PROC / "cpuinfo").read_text())
    assert model == "Intel(R) Xeon(R) Platinum 8480+"
    assert count == 8


def test_an_arm_cpuinfo_without_model_name_says_so() -> None:
    # aarch64 (e.g. Grace) lists implementer/part codes, no "model name".
    text = ("processor\t: 0\nBogoMIPS\t: 2000.00\nFeatures\t: fp asimd evtstrm sha1 sha2 crc32 atomics\n"
            "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd4f\n"
            "CPU revision\t: 0\n\n")
    model, count = parse_cpuinfo(text)
    assert isinstance(model, Unavailable) and "model name" in model.reason
    assert count == 1


def test_meminfo_values_are_bytes() -> None:
    values = parse_meminfo((PROC / "meminfo").read_text())
    assert values["MemTotal"] == 2113339516 * 1024
    assert values["MemAvailable"] == 2041215348 * 1024
    assert values["SwapTotal"] == 8388604 * 1024
    assert values["HugePages_Total"] == 0  # a count, not kB
    assert values["Active(anon)"] == 3340060 * 1024


def test_system_facts_from_a_synthetic_two_socket_node() -> None:
    facts = collect_system(CollectOptions(cwd="/"), proc_root=str(PROC), sysfs_root=str(SYSFS_2_SOCKETS))
    assert facts.cpu_model == "Intel(R) Xeon(R) Platinum 8480+"
    assert facts.logical_cpus == 8
    assert facts.mem_total_bytes == 2113339516 * 1024
    assert facts.mem_available_bytes == 2041215348 * 1024
    assert facts.swap_total_bytes == 8388604 * 1024
    assert known(facts.numa_nodes)
    assert [(n.node_id, n.cpulist) for n in facts.numa_nodes] == [(0, "0-47,96-143"), (1, "48-95,144-191")]
    assert facts.numa_nodes[1].mem_total_bytes == 1056876544 * 1024


def test_numa_nodes_of_the_real_machine_cover_every_cpu() -> None:
    nodes = read_numa_nodes("/sys")
    if isinstance(nodes, Unavailable):
        pytest.skip(nodes.reason)
    assert [n.node_id for n in nodes] == sorted(n.node_id for n in nodes)
    assert all(n.cpulist for n in nodes)


def test_missing_numa_directory_is_a_reason(tmp_path: Path) -> None:
    nodes = read_numa_nodes(str(tmp_path))
    assert isinstance(nodes, Unavailable) and "NUMA" in nodes.reason


def test_unreadable_proc_files_become_reasons_not_crashes(tmp_path: Path) -> None:
    empty = str(tmp_path)
    facts = collect_system(CollectOptions(cwd=empty), proc_root=empty, sysfs_root=empty)
    assert isinstance(facts.cpu_model, Unavailable) and "cpuinfo" in facts.cpu_model.reason
    assert facts.logical_cpus == os.cpu_count()  # falls back to os.cpu_count()
    assert isinstance(facts.mem_total_bytes, Unavailable) and "meminfo" in facts.mem_total_bytes.reason
    assert known(facts.shm) and isinstance(facts.shm.fstype, Unavailable)
    assert len(facts.disks) == 6
    assert all(known(d.total_bytes) for d in facts.disks)  # statvfs still works


# ------------------------------------------------------------------------------------------- mounts


def test_mounts_are_parsed_with_octal_escapes() -> None:
    mounts = parse_mounts((PROC / "self" / "mounts").read_text())
    rows = [(m.device, m.mount_point, m.fstype) for m in mounts]
    assert ("fileserver:/export/home", "/home", "nfs4") in rows
    assert any(m.mount_point == "/mnt/local disk" for m in mounts)


@pytest.mark.parametrize(("path", "mount_point", "fstype"), [
    ("/home/alice/.triton/cache", "/home", "nfs4"),
    ("/home", "/home", "nfs4"),
    ("/homework", "/", "ext4"),
    ("/scratch/alice/torch_extensions", "/scratch", "lustre"),
    ("/raid/cache/x", "/raid/cache", "tmpfs"),
    ("/raid/data", "/raid", "xfs"),
    ("/mnt/local disk/tmp", "/mnt/local disk", "xfs"),
    ("/dev/shm", "/dev/shm", "tmpfs"),
    ("/", "/", "ext4"),
])
def test_the_longest_mount_point_holding_a_path_wins(path: str, mount_point: str, fstype: str) -> None:
    entry = find_mount(parse_mounts((PROC / "self" / "mounts").read_text()), path)
    assert known(entry)
    assert (entry.mount_point, entry.fstype) == (mount_point, fstype)


def test_a_later_mount_on_the_same_point_shadows_the_earlier_one() -> None:
    text = "/dev/a /data ext4 rw 0 0\nserver:/x /data nfs rw 0 0\n"
    entry = find_mount(parse_mounts(text), "/data/f")
    assert known(entry) and entry.fstype == "nfs"


def test_no_mount_holding_a_path_is_a_reason() -> None:
    assert isinstance(find_mount([], "/x"), Unavailable)


# -------------------------------------------------------------------------------------------- disks


def test_a_path_that_does_not_exist_yet_is_measured_at_its_nearest_existing_parent(tmp_path: Path) -> None:
    facts = disk_facts("triton_cache", str(tmp_path / "not" / "yet" / "there"),
                       parse_mounts(Path("/proc/self/mounts").read_text()))
    stats = os.statvfs(tmp_path)
    assert facts.path == str(tmp_path / "not" / "yet" / "there")
    assert facts.total_bytes == stats.f_frsize * stats.f_blocks
    assert known(facts.fstype) and facts.fstype
    assert known(facts.mount_point) and str(tmp_path.resolve()).startswith(facts.mount_point)


def test_a_symlinked_cache_is_measured_where_it_points(tmp_path: Path) -> None:
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / ".triton").symlink_to("/dev/shm")
    facts = disk_facts("triton_cache", str(tmp_path / "home" / ".triton" / "cache"),
                       parse_mounts(Path("/proc/self/mounts").read_text()))
    assert facts.mount_point == "/dev/shm"
    assert facts.fstype == "tmpfs"


def test_a_hung_filesystem_is_reported_with_its_mount_instead_of_waited_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The edge we lack here: statvfs on a dead NFS server never returns.
    def hung_statvfs(path: str) -> os.statvfs_result:
        time.sleep(3)
        raise OSError("unreachable")

    monkeypatch.setattr(system.os, "statvfs", hung_statvfs)
    mounts = parse_mounts((PROC / "self" / "mounts").read_text())
    started = time.monotonic()
    facts = disk_facts("triton_cache", "/home/alice/.triton/cache", mounts, timeout_s=0.2)
    assert time.monotonic() - started < 1.5
    assert isinstance(facts.total_bytes, Unavailable)
    assert "did not answer within 0.2s" in facts.total_bytes.reason
    assert (facts.mount_point, facts.fstype) == ("/home", "nfs4")


def test_several_dirs_on_a_hung_filesystem_cost_one_deadline_not_one_each(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def hung_statvfs(path: str) -> os.statvfs_result:
        time.sleep(3)
        raise OSError("unreachable")

    monkeypatch.setattr(system.os, "statvfs", hung_statvfs)
    targets = disk_targets("/home/alice/project", {}, "/home/alice")
    started = time.monotonic()
    disks = measure_disks(targets, parse_mounts((PROC / "self" / "mounts").read_text()), timeout_s=0.3)
    assert time.monotonic() - started < 1.2
    assert [d.purpose for d in disks] == [purpose for purpose, _ in targets]
    assert all(isinstance(d.total_bytes, Unavailable) for d in disks)
    assert {d.purpose: d.fstype for d in disks}["triton_cache"] == "nfs4"


def test_disk_targets_follow_torch_and_triton_defaults() -> None:
    targets = dict(disk_targets("/work", {}, "/home/alice"))
    assert targets == {
        "root": "/", "home": "/home/alice", "tmp": "/tmp", "cwd": "/work",
        "torch_extensions": "/home/alice/.cache/torch_extensions",
        "triton_cache": "/home/alice/.triton/cache",
    }


def test_disk_targets_honour_the_variables_jobs_honour() -> None:
    env = {"TORCH_EXTENSIONS_DIR": "/local/ext", "TRITON_CACHE_DIR": "/local/triton", "TMPDIR": "/local/tmp"}
    targets = dict(disk_targets("/work", env, "/home/alice"))
    assert targets["torch_extensions"] == "/local/ext"
    assert targets["triton_cache"] == "/local/triton"
    assert targets["tmp"] == "/local/tmp"
    xdg = dict(disk_targets("/w", {"XDG_CACHE_HOME": "/xdg", "TRITON_HOME": "/th"}, "/h"))
    assert xdg["torch_extensions"] == "/xdg/torch_extensions"
    assert xdg["triton_cache"] == "/th/.triton/cache"


# ------------------------------------------------------------------------------- the real machine


def test_collect_system_reads_this_machine() -> None:
    facts = collect_system(CollectOptions())
    assert known(facts.cpu_model) and facts.cpu_model
    assert facts.logical_cpus == os.cpu_count()
    assert known(facts.mem_total_bytes) and facts.mem_total_bytes > 256 * (1 << 20)
    assert known(facts.mem_available_bytes) and facts.mem_available_bytes <= facts.mem_total_bytes
    assert known(facts.swap_total_bytes)
    assert known(facts.shm) and facts.shm.mount_point == "/dev/shm"
    assert known(facts.shm.total_bytes) and facts.shm.total_bytes == (
        os.statvfs("/dev/shm").f_frsize * os.statvfs("/dev/shm").f_blocks)
    assert [d.purpose for d in facts.disks] == [
        "root", "home", "tmp", "cwd", "torch_extensions", "triton_cache"]
    root = facts.disks[0]
    assert root.mount_point == "/" and known(root.fstype) and known(root.free_bytes)


def test_ulimits_match_getrlimit_with_infinity_as_none() -> None:
    limits = read_limits()
    assert known(limits)
    by_name = {limit.name: limit for limit in limits}
    assert set(by_name) == {"memlock", "nofile", "nproc", "stack"}
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert by_name["nofile"].soft == (None if soft == resource.RLIM_INFINITY else soft)
    assert by_name["nofile"].hard == (None if hard == resource.RLIM_INFINITY else hard)


# ------------------------------------------------------------------------------------------ fuzzing


@given(st.text())
def test_malformed_proc_text_never_raises(text: str) -> None:
    parse_cpuinfo(text)
    parse_meminfo(text)
    mounts = parse_mounts(text)
    find_mount(mounts, "/home/x")


MEMINFO_PIECES = [*(PROC / "meminfo").read_text().splitlines(), "MemTotal:", ":", "x: y kB",
                  "Node 0 MemTotal: 12 kB", "MemTotal: -5 kB", "MemTotal: 99999999999999999999"]


@given(st.lists(st.sampled_from(MEMINFO_PIECES), max_size=30))
def test_shuffled_meminfo_lines_give_non_negative_byte_counts(lines: list[str]) -> None:
    assert all(value >= 0 for value in parse_meminfo("\n".join(lines)).values())
