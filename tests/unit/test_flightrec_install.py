"""The flight recorder's hook goes into a per-job directory under a root every user shares (as /tmp is):
it is written only where no other user could have put or could replace what the ranks import."""

from __future__ import annotations

import os
import time
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


def test_a_launch_removes_this_users_job_directories_untouched_for_two_weeks_and_keeps_the_rest(
        tmp_path: Path) -> None:
    root = tmp_path / "runs"
    old, recent = root / "20261101-000000-aaaa", root / "20261130-000000-bbbb"
    for directory in (old, recent):
        (directory / "flightrec").mkdir(parents=True)
        (directory / "flightrec" / "rank_0").write_text("dump")
    month_ago = time.time() - 30 * 86400
    os.utime(old, (month_ago, month_ago))
    assert install(root)[0] == 0
    assert sorted(p.name for p in root.iterdir()) == ["20261130-000000-bbbb", "job1"]
