"""doctor under Slurm says whether clusterkit is the health check on every node, and at which version;
``clusterkit nodecheck install`` prints what makes it so."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from clusterkit import __version__
from clusterkit.checks import load_checks
from clusterkit.checks.registry import REGISTRY, ClusterView, run_cluster_checks
from clusterkit.cli import main
from clusterkit.core.findings import Finding, Outcome, Severity
from clusterkit.node.facts import ClusterProbes, Maybe, SlurmFacts, SlurmHealthCheckFacts, Unavailable
from clusterkit.nodecheck.install import SCRIPT_MARK, InstallOptions, hook_script, install_text
from clusterkit.nodecheck.installed import MISSING, NOT_OURS, _version, parse_hook_config, version_command
from clusterkit.nodecheck.profile import Hook
from tests.unit.test_checks_slurm import view

CONFIG = """Configuration data as of 2026-12-04T15:00:00
AccountingStorageBackupHost = (null)
Epilog                  = (null)
HealthCheckInterval     = 300 sec
HealthCheckNodeState    = ANY
HealthCheckProgram      = /etc/slurm/clusterkit-health
Prolog                  = /etc/slurm/clusterkit-prolog
"""


def test_slurms_hooks_are_read_from_scontrol_show_config() -> None:
    hooks = parse_hook_config(CONFIG)
    assert (hooks.program, hooks.interval_s, hooks.prolog, hooks.epilog) == (
        "/etc/slurm/clusterkit-health", 300, "/etc/slurm/clusterkit-prolog", "")


def test_a_node_says_its_version_only_when_the_program_is_clusterkits() -> None:
    command = version_command("/etc/slurm/nhc wrapper")
    assert f"grep -q '{SCRIPT_MARK}' '/etc/slurm/nhc wrapper'" in command
    assert command.index("--version") > command.index("grep -q")
    assert _version(["clusterkit 0.1.0"], "") == "0.1.0"
    assert _version([NOT_OURS], "") == Unavailable(NOT_OURS)
    assert _version(None, "srun: node down") == Unavailable("srun: node down")


def judged(hooks: Maybe[SlurmHealthCheckFacts]) -> list[Finding]:
    cluster = view()
    assert cluster.probes is not None and isinstance(cluster.probes.slurm, SlurmFacts)
    slurm = dataclasses.replace(cluster.probes.slurm, health_check=hooks)
    probes: ClusterProbes = dataclasses.replace(cluster.probes, slurm=slurm)
    load_checks()
    found = run_cluster_checks([REGISTRY["slurm-nodecheck-installed"]],
                               ClusterView(hosts=cluster.hosts, nodes=cluster.nodes, probes=probes))
    return [f for f in found if f.outcome is Outcome.FAIL]


def hooks(**versions: Maybe[str]) -> SlurmHealthCheckFacts:
    return SlurmHealthCheckFacts("/etc/slurm/clusterkit-health", 300, "", "", dict(versions))


def test_installed_everywhere_at_this_version_is_said_as_information() -> None:
    found = judged(hooks(gpu01=__version__, gpu02=__version__, gpu03=__version__))
    assert [(f.severity, f.message) for f in found] == [
        (Severity.INFO, f"clusterkit {__version__} is Slurm's health check every 300s on every node of the job "
                        "(gpu[01-03])")]


def test_a_node_without_it_and_a_node_at_another_version_are_warnings() -> None:
    found = judged(hooks(gpu01=__version__, gpu02=Unavailable(MISSING), gpu03="0.0.1"))
    assert [(f.severity, f.host) for f in found] == [(Severity.WARNING, "gpu02"), (Severity.WARNING, "gpu03")]
    assert found[0].message.startswith(f"gpu02: /etc/slurm/clusterkit-health is {MISSING}")
    assert found[1].message == (f"gpu03 run clusterkit 0.0.1 as Slurm's health check every 300s; this is "
                                f"clusterkit {__version__}")


def test_another_sites_health_check_is_left_to_it() -> None:
    found = judged(hooks(gpu01=Unavailable(NOT_OURS), gpu02=Unavailable(NOT_OURS), gpu03=Unavailable(NOT_OURS)))
    assert [f.severity for f in found] == [Severity.INFO] and "left to that program" in found[0].message


def test_no_health_check_at_all_is_information_with_the_way_to_install() -> None:
    found = judged(SlurmHealthCheckFacts("", None, "", "", {}))
    assert [f.severity for f in found] == [Severity.INFO] and "clusterkit nodecheck install" in found[0].fix


def test_outside_slurm_it_does_not_apply() -> None:
    assert judged(Unavailable("not read")) == []


def test_the_install_text_has_the_slurm_conf_lines_and_a_script_per_hook() -> None:
    text = install_text(InstallOptions(python="/opt/ck/bin/python", interval_s=120))
    for line in ("HealthCheckProgram=/etc/slurm/clusterkit-health", "HealthCheckInterval=120",
                 "HealthCheckNodeState=ANY", "Prolog=/etc/slurm/clusterkit-prolog",
                 "Epilog=/etc/slurm/clusterkit-epilog", "PrologFlags=Alloc",
                 "SchedulerParameters=nohold_on_prolog_fail"):
        assert f"\n{line}\n" in text
    assert text.count("#!/bin/sh") == 3


def test_a_hook_script_is_quiet_bounded_and_carries_its_environment() -> None:
    script = hook_script(InstallOptions(python="/opt/ck/bin/python", budget_s=10, env={"LD_LIBRARY_PATH": "/x y"}),
                         Hook.PROLOG)
    lines = script.splitlines()
    assert lines[0] == "#!/bin/sh" and lines[1].startswith(f"{SCRIPT_MARK} prolog")
    assert "export LD_LIBRARY_PATH='/x y'" in lines
    assert lines[-1].startswith("exec timeout -k 5 20 /opt/ck/bin/python -m clusterkit.nodecheck run --hook prolog "
                                "--quiet --log /var/log/clusterkit/nodecheck.log --budget 10")


def test_install_writes_the_three_scripts_executable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["nodecheck", "install", "--dir", str(tmp_path), "--write", "--python", "/opt/ck/bin/python"]) == 0
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["clusterkit-epilog", "clusterkit-health", "clusterkit-prolog"]
    assert all(os.access(tmp_path / name, os.X_OK) for name in written)
    assert capsys.readouterr().out.count("wrote ") == 3


@pytest.mark.parametrize("args", [["install", "--env", "NO_EQUALS"], ["install", "--interval", "0"],
                                  ["run", "--budget", "0"], ["run", "--hook", "sometimes"]])
def test_bad_input_is_one_line_and_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["nodecheck", *args]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error:" in err
