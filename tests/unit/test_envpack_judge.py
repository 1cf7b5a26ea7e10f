"""What a push makes of its survey: shared directories found by tokens, a copy judged by what it holds,
what is at a prefix and whether it may be replaced, room on one disk or two. The node side (node_env)
runs for real on this machine's directories; each "node" is a name."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from clusterkit.envpack.judge import (
    HEAD,
    cannot_install,
    copy_problems,
    head_holds_source,
    node_holds_source,
    share_groups,
)
from clusterkit.envpack.pack import Manifest, node_env_command
from clusterkit.node import env_unpack as node_env

MANIFEST = Manifest(kind="conda", prefix="/opt/envs/ck", archive="ck-1.tar.zst", size=16_000_000, sha256="a" * 64,
                    unpacked_bytes=52_000_000, files=880, python_version="3.11.9",
                    package_set={"python": "p" * 64, "python_count": 1, "conda": "c" * 64}, imports={},
                    fingerprint="f")


def run_op(spec: dict[str, Any], host: str) -> dict[str, Any]:
    done = subprocess.run(node_env_command("python3", {**spec, "host": host}), shell=True, capture_output=True,
                          text=True, check=False)
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("@@ckenv "))
    result: dict[str, Any] = json.loads(line[len("@@ckenv "):])
    return result


def test_nodes_that_share_a_directory_are_one_group_however_their_surveys_and_forgets_interleave(
        tmp_path: Path) -> None:
    # issue 19, W3: a node's marker step deleted its marker while others still listed them
    shared, private = tmp_path / "shared", tmp_path / "private"
    for directory in (shared, private):
        (directory / "envs").mkdir(parents=True)
    specs = {"n1": str(shared / "envs/ck"), "n2": str(shared / "envs/ck"), "n3": str(private / "envs/ck")}
    seen: dict[str, list[str]] = {}
    for host, prefix in specs.items():  # one after the other: n1 sees only itself
        seen[host] = run_op({"op": "survey", "prefix": prefix, "run": "r7"}, host)["seen"]["prefix"]
    for host, prefix in reversed(specs.items()):  # n2 forgets before n1 lists again
        seen[host] += run_op({"op": "forget", "prefix": prefix, "run": "r7"}, host)["seen"]["prefix"]
    groups = share_groups(list(specs), seen)
    assert groups == {"n1": {"n1", "n2"}, "n2": {"n1", "n2"}, "n3": {"n3"}}
    assert not list((shared / "envs").iterdir()) and not list((private / "envs").iterdir())


def test_a_token_counts_only_with_its_own_name_inside(tmp_path: Path) -> None:
    (tmp_path / f"{node_env.TOKEN_PREFIX}r7-n2").write_text("n9")  # not what n2 wrote
    (tmp_path / f"{node_env.TOKEN_PREFIX}r6-n3").write_text("n3")  # another run's
    assert node_env.write_token(tmp_path, "r7", "n1")
    assert node_env.read_tokens(tmp_path, "r7") == ["n1"]


def test_groups_join_through_the_head_and_through_each_other() -> None:
    groups = share_groups(["a", "b", "c", "d"], {"a": [HEAD], "b": ["b", HEAD], "c": ["a", "c"], "d": []})
    assert groups["a"] == groups["b"] == groups["c"] == {"a", "b", "c", HEAD}
    assert groups["d"] == {"d"}


@pytest.mark.parametrize(("make", "state"), [
    (lambda p: None, "absent"),
    (lambda p: p.mkdir(), "empty"),
    (lambda p: (p.mkdir(), (p / node_env.INSTALLED_MARKER).write_text("{}")), "clusterkit"),
    (lambda p: (p.mkdir(), (p / "precious.txt").write_text("x")), "foreign"),
    (lambda p: p.write_text("a file"), "foreign"),
])
def test_what_is_at_a_prefix(tmp_path: Path, make: Any, state: str) -> None:
    make(tmp_path / "env")
    assert node_env.prefix_state(tmp_path / "env")["state"] == state


def survey_info(**fields: Any) -> dict[str, Any]:
    base = {"at_prefix": {"state": "clusterkit"},
            "installed": {"sha256": MANIFEST.sha256, "package_set": MANIFEST.package_set,
                          "tree": {"files": 880, "bytes": 52_000_000}},
            "env": {"prefix": MANIFEST.prefix, "python": "3.11.9", "conda": "c" * 64,
                    "python_packages": {"sha256": "p" * 64, "count": 1}, "tree": {"files": 880, "bytes": 52_000_000}}}
    return {**base, **fields}


def test_a_copy_is_this_env_when_marker_interpreter_and_files_agree() -> None:
    assert copy_problems(survey_info(), MANIFEST) == []


def test_a_copy_whose_marker_is_right_but_whose_contents_are_not_is_not_this_env() -> None:
    # issue 19, W1: only the marker was compared
    uninstalled = survey_info(env={**survey_info()["env"], "python_packages": {"sha256": "q" * 64, "count": 0}})
    assert copy_problems(uninstalled, MANIFEST)[0].startswith("Python package set differs from the head's (0 vs 1")
    lost_file = survey_info(env={**survey_info()["env"], "tree": {"files": 879, "bytes": 51_999_000}})
    assert copy_problems(lost_file, MANIFEST) == [
        "it holds 879 files (52.0 MB), 880 (52.0 MB) when it was unpacked"]
    gone = survey_info(env={"error": "/opt/envs/ck/bin/python does not start: No such file or directory"})
    assert copy_problems(gone, MANIFEST) == ["/opt/envs/ck/bin/python does not start: No such file or directory"]
    rebuilt = survey_info(installed={"sha256": "b" * 64, "package_set": MANIFEST.package_set})
    assert copy_problems(rebuilt, MANIFEST)[0].startswith("another build of the env")


def place(free: int, fs: int, staging_free: int, staging_fs: int, **extra: Any) -> dict[str, Any]:
    return {"tar": "/bin/tar", "zstd": "/bin/zstd", "writable": True, "parent": "/opt/envs", "free": free, "fs": fs,
            "staging": {"dir": "/scratch/stage", "writable": True, "free": staging_free, "fs": staging_fs, **extra}}


def test_the_archive_needs_room_on_the_staging_disk_and_the_env_on_the_prefixs() -> None:
    # issue 19, W5: the archive's size was always added to the prefix's disk
    assert cannot_install("n1", place(60_000_000, 1, 10**9, 2), MANIFEST) is None
    error, fix = cannot_install("n1", place(60_000_000, 1, 60_000_000, 1), MANIFEST) or ("", "")
    assert error == ("no space on n1: /opt/envs has 60.0 MB free, the env needs 68.0 MB (archive 16.0 MB + "
                     "unpacked 52.0 MB)")
    assert fix == "free 8.0 MB under /opt/envs on n1, or push with --staging DIR on another disk"
    error, fix = cannot_install("n1", place(60_000_000, 1, 1_000_000, 2), MANIFEST) or ("", "")
    assert error == "no space on n1 for the archive: /scratch/stage has 1.0 MB free, the archive needs 16.0 MB"
    error, _ = cannot_install("n1", place(50_000_000, 1, 10**9, 2), MANIFEST) or ("", "")
    assert error == "no space on n1: /opt/envs has 50.0 MB free, the unpacked env needs 52.0 MB"
    # an archive already staged whole takes no more room
    assert cannot_install("n1", place(60_000_000, 1, 60_000_000, 1, staged_bytes=MANIFEST.size), MANIFEST) is None


def test_an_env_directly_under_the_root_is_not_fixed_by_chowning_the_root() -> None:
    # issue 19, M9: the fix was `sudo mkdir -p / && sudo chown $USER /`
    at_root = Manifest(**{**MANIFEST.__dict__, "prefix": "/ckenv"})
    error, fix = cannot_install("n1", {**place(10**9, 1, 10**9, 1), "writable": False, "parent": "/"}, at_root) \
        or ("", "")
    assert error == "cannot create /ckenv on n1: / is not writable by this user"
    assert "chown $USER /" not in fix.replace("/opt/envs", "") and "/opt/envs/ckenv" in fix
    error, fix = cannot_install("n1", {**place(10**9, 1, 10**9, 1), "writable": False, "parent": "/opt"},
                                MANIFEST) or ("", "")
    assert fix == "on n1: sudo mkdir -p /opt/envs && sudo chown $USER /opt/envs"


def test_a_prefix_unpacked_from_the_archive_is_never_its_source_even_with_the_sources_inode(tmp_path: Path) -> None:
    # issue 19, W3 (intermittent): the shared prefix was removed and installed again, got its old inode
    # number back, and every node sharing it was called "up to date: the env the archive was packed from"
    prefix = tmp_path / "envs/ck"
    prefix.mkdir(parents=True)
    st = prefix.stat()
    source = {"host": socket.gethostname(), "dev": st.st_dev, "ino": st.st_ino}
    packed_here = Manifest(**{**MANIFEST.__dict__, "prefix": str(prefix), "source": source})
    assert head_holds_source(packed_here)
    assert node_holds_source({"source": source, "installed": None}, packed_here)
    marker = packed_here.installed_marker()
    (prefix / node_env.INSTALLED_MARKER).write_text(json.dumps(marker))
    assert not head_holds_source(packed_here)
    assert not node_holds_source({"source": source, "installed": marker}, packed_here)
    older = {**marker, "sha256": "b" * 64}  # unpacked from another archive, then packed into this one
    (prefix / node_env.INSTALLED_MARKER).write_text(json.dumps(older))
    assert head_holds_source(packed_here)
    assert node_holds_source({"source": source, "installed": older}, packed_here)
