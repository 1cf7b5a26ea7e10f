"""The flight recorder's hook goes into a per-job directory under a root every user shares (as /tmp is):
it is written only where no other user could have put or could replace what the ranks import."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from clusterkit.cluster.local import LocalNodes
from clusterkit.cluster.target import this_machine
from clusterkit.stacks.flightrec import install_hook, job_flightrec_dir


def install(root: Path) -> tuple[int, str]:
    [(_, answer)] = install_hook(LocalNodes(this_machine().hosts[0]), job_flightrec_dir("job1", str(root)),
                                 30).items()
    assert answer.value is not None, answer.error
    return answer.value.exit_code, answer.value.stderr


def test_a_new_root_is_made_sticky_and_the_jobs_directory_private(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    assert install(root) == (0, "")
    assert (root / "job1" / "flightrec" / "sitecustomize.py").read_text().startswith('"""The flight recorder')
    assert root.stat().st_mode & 0o1777 == 0o1777
    assert (root / "job1" / "flightrec").stat().st_mode & 0o777 == 0o700


def test_a_root_that_is_a_link_is_refused_and_nothing_is_written_where_it_points(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o1777)
    (tmp_path / "runs").symlink_to(elsewhere)
    code, why = install(tmp_path / "runs")
    assert code == 3 and "is a link" in why
    assert list(elsewhere.iterdir()) == []


def test_a_root_others_may_write_without_the_sticky_bit_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    root.mkdir()
    root.chmod(0o777)
    code, why = install(root)
    assert code == 3 and "without the sticky bit" in why
    assert list(root.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")
def test_a_root_that_belongs_to_another_user_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    root.mkdir(mode=0o755)
    os.chown(root, 65534, 65534)
    code, why = install(root)
    assert code == 3 and "another user's" in why
