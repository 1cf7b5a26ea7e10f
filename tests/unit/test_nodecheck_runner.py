"""One node-check run: what it judges, what it asks scontrol, what it logs, how it exits for each hook.

The facts are built (a stand-in for collection), and ``scontrol`` is a stand-in script on PATH that
prints a recorded node record and notes every call: the orchestration is what is under test here;
the real slurmd and slurmctld are in tests/cluster/test_slurm_health.py.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path

import pytest

from clusterkit.node.facts import DiskFacts, NodeFacts, SystemFacts
from clusterkit.nodecheck.policy import Act
from clusterkit.nodecheck.profile import PROFILES, Hook, profile_for
from clusterkit.nodecheck.runner import RunOptions, hook_exit_code, run_nodecheck
from tests.factories import GIB, healthy_gpu_node, with_section, xid

RECORD = "NodeName=gpu07 Arch=x86_64 CPUTot=64 State={state} Reason={reason} Partitions=batch\n"


def full_shm() -> NodeFacts:
    facts = healthy_gpu_node()
    assert isinstance(facts.system, SystemFacts) and isinstance(facts.system.shm, DiskFacts)
    return with_section(facts, "system", shm=dataclasses.replace(facts.system.shm, total_bytes=16 * GIB,
                                                                 free_bytes=0))


def with_xid() -> NodeFacts:
    return with_section(healthy_gpu_node(), "nvidia", xid_events=[xid(79)])


@pytest.fixture
def scontrol(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """A stand-in scontrol on PATH; its node record is in ``record``, its calls in ``calls``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "scontrol"
    script.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path}/calls\n"
                      f"[ \"$1\" = show ] && cat {tmp_path}/record\nexit 0\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    (tmp_path / "record").write_text(RECORD.format(state="IDLE", reason="(null)"))
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}, tmp_path


def options(tmp_path: Path, environ: dict[str, str], hook: Hook = Hook.HEALTH, dry_run: bool = False) -> RunOptions:
    return RunOptions(profile=PROFILES[hook], node="gpu07", dry_run=dry_run, log_path=str(tmp_path / "log" / "nc.log"),
                      environ=environ)


def calls(tmp_path: Path) -> list[str]:
    path = tmp_path / "calls"
    return path.read_text().splitlines() if path.exists() else []


def test_an_error_drains_the_node_through_scontrol_and_logs_it(scontrol: tuple[dict[str, str], Path]) -> None:
    environ, tmp = scontrol
    result = run_nodecheck(options(tmp, environ), lambda profile: (full_shm(), []))
    assert result.decision is not None and result.decision.act is Act.DRAIN and result.acted
    assert calls(tmp) == ["show node gpu07 --oneliner",
                          "update NodeName=gpu07 State=DRAIN Reason=clusterkit: shm-full /dev/shm"]
    line = (tmp / "log" / "nc.log").read_text()
    assert "nodecheck health gpu07: drained (clusterkit: shm-full /dev/shm). found: shm-full /dev/shm." in line
    assert result.exit_code == 0


def test_a_dry_run_asks_for_the_state_and_changes_nothing(scontrol: tuple[dict[str, str], Path]) -> None:
    environ, tmp = scontrol
    result = run_nodecheck(options(tmp, environ, dry_run=True), lambda profile: (with_xid(), []))
    assert calls(tmp) == ["show node gpu07 --oneliner"] and not result.acted
    assert "would drain (clusterkit: xid-critical GPU 0" in (tmp / "log" / "nc.log").read_text()


def test_a_clean_run_resumes_a_node_clusterkit_drained(scontrol: tuple[dict[str, str], Path]) -> None:
    environ, tmp = scontrol
    (tmp / "record").write_text(RECORD.format(state="IDLE+DRAIN", reason="clusterkit: shm-full /dev/shm [root@x]"))
    result = run_nodecheck(options(tmp, environ), lambda profile: (healthy_gpu_node(), []))
    assert calls(tmp)[-1] == "update NodeName=gpu07 State=RESUME" and result.acted
    assert "nodecheck health gpu07: resumed. found: no error." in (tmp / "log" / "nc.log").read_text()


def test_a_hung_section_is_a_fault_named_after_the_section(scontrol: tuple[dict[str, str], Path]) -> None:
    environ, tmp = scontrol
    result = run_nodecheck(options(tmp, environ), lambda profile: (healthy_gpu_node(), ["nvidia"]))
    assert result.decision is not None and result.decision.reason == "clusterkit: hung nvidia >20s"


def test_only_the_profiles_checks_judge_the_node(scontrol: tuple[dict[str, str], Path]) -> None:
    environ, tmp = scontrol
    result = run_nodecheck(options(tmp, environ), lambda profile: (healthy_gpu_node(), []))
    assert {f.check_id for f in result.findings} == set(PROFILES[Hook.HEALTH].checks)


def test_without_scontrol_nothing_is_changed_and_the_log_says_why(tmp_path: Path) -> None:
    environ = {**os.environ, "PATH": str(tmp_path)}
    result = run_nodecheck(options(tmp_path, environ), lambda profile: (full_shm(), []))
    assert result.decision is not None and result.decision.act is Act.NOTHING
    assert "scontrol is not installed here" in (tmp_path / "log" / "nc.log").read_text()


def test_an_unwritable_log_is_reported_not_raised(scontrol: tuple[dict[str, str], Path]) -> None:
    environ, tmp = scontrol
    (tmp / "log").write_text("a file where the log's directory should be")
    result = run_nodecheck(options(tmp, environ), lambda profile: (healthy_gpu_node(), []))
    assert result.log_error.startswith("cannot write the log")


def test_a_crashing_collection_still_logs_and_exits_as_slurm_expects(scontrol: tuple[dict[str, str], Path]) -> None:
    environ, tmp = scontrol

    def broken(profile: object) -> tuple[NodeFacts, list[str]]:
        raise RuntimeError("boom")

    result = run_nodecheck(options(tmp, environ, Hook.PROLOG), broken)
    assert result.error == "RuntimeError: boom" and result.exit_code == 0
    assert "error: RuntimeError: boom" in (tmp / "log" / "nc.log").read_text()


@pytest.mark.parametrize(("hook", "faulty", "code"), [
    (Hook.HEALTH, True, 0), (Hook.HEALTH, False, 0), (Hook.PROLOG, True, 1), (Hook.PROLOG, False, 0),
    (Hook.EPILOG, True, 0), (Hook.EPILOG, False, 0)])
def test_exit_codes_follow_slurms_rules_for_each_hook(hook: Hook, faulty: bool, code: int) -> None:
    assert hook_exit_code(hook, faulty) == code


def test_a_shorter_budget_shortens_every_deadline_inside_it() -> None:
    short = profile_for(Hook.HEALTH, 10)
    assert (short.budget_s, short.section_timeout_s) == (10, 5)
    assert profile_for(Hook.HEALTH, 1000) == PROFILES[Hook.HEALTH]


def test_every_hook_finishes_well_inside_slurms_60s_health_check_kill() -> None:
    for profile in PROFILES.values():
        assert profile.section_timeout_s + 2 * profile.scontrol_timeout_s < profile.budget_s <= 45
