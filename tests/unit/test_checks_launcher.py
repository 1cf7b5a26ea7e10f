"""Launcher checks: pdsh, ssh, sshd, ~/.ssh modes, .deepspeed_env files, CUDA_VISIBLE_DEVICES."""

from __future__ import annotations

import dataclasses

import pytest

from clusterkit.checks.launcher import quotes_values
from clusterkit.core.findings import Severity
from clusterkit.node.facts import NodeFacts, Unavailable
from tests.factories import (
    CheckCase,
    assert_case,
    assert_table_covers,
    dsenv_file,
    fail,
    healthy_gpu_node,
    make_host,
    passes,
    run_check,
    skips,
    with_env,
    with_section,
)

NOT_FOUND = Unavailable("not found on PATH")


def launcher(**changes: object) -> NodeFacts:
    return with_section(healthy_gpu_node(), "launcher", **changes)


def dsenv(*lines: str, cwd_lines: list[str] | None = None, deepspeed: str = "0.19.8") -> NodeFacts:
    files = [dsenv_file(list(lines)), dsenv_file(cwd_lines, "/work/.deepspeed_env")]
    return with_section(launcher(deepspeed_env_files=files), "python_env", deepspeed_version=deepspeed)


def rhel(facts: NodeFacts) -> NodeFacts:
    return dataclasses.replace(facts, host=make_host(os_name="Rocky Linux 9.4 (Blue Onyx)"))


CASES: list[CheckCase] = [
    fail("pdsh-missing", "debian", lambda: launcher(pdsh_path=NOT_FOUND), "pdsh is not on the non-interactive PATH",
         fix_contains="sudo apt-get install -y pdsh"),
    fail("pdsh-missing", "rocky", lambda: rhel(launcher(pdsh_path=NOT_FOUND)), "pdsh",
         fix_contains="sudo dnf install -y pdsh pdsh-rcmd-ssh"),
    passes("pdsh-missing", "installed", healthy_gpu_node),
    skips("pdsh-missing", "one-host-launch-here", lambda: launcher(pdsh_path=NOT_FOUND),
          "starts its ranks without pdsh", context={"multi_node": False}),
    fail("pdsh-ssh-module-missing", "rsh-only", lambda: rhel(launcher(pdsh_rcmd_modules=["rsh", "exec"])),
         "pdsh has no ssh module (rcmd modules: rsh, exec)", fix_contains="sudo dnf install -y pdsh-rcmd-ssh"),
    passes("pdsh-ssh-module-missing", "has-ssh", healthy_gpu_node),
    skips("pdsh-ssh-module-missing", "no-pdsh", lambda: launcher(pdsh_path=NOT_FOUND), "pdsh unavailable"),
    fail("pdsh-default-rcmd-rsh", "debian-default", healthy_gpu_node, "pdsh's default rcmd is rsh"),
    passes("pdsh-default-rcmd-rsh", "ssh-default", lambda: launcher(pdsh_default_rcmd="ssh")),
    skips("pdsh-default-rcmd-rsh", "env-says-ssh", lambda: with_env(healthy_gpu_node(), PDSH_RCMD_TYPE="ssh")),
    fail("ssh-client-missing", "missing", lambda: launcher(ssh_path=NOT_FOUND),
         "ssh is not on the non-interactive PATH", fix_contains="openssh-client"),
    passes("ssh-client-missing", "installed", healthy_gpu_node),
    fail("sshd-not-listening", "no-sshd", lambda: launcher(sshd_listening_ports=[]),
         "nothing listens for SSH on port 22", fix_contains="sudo service ssh start"),
    fail("sshd-not-listening", "other-port", lambda: launcher(sshd_listening_ports=[2222]),
         "sshd listens on port 2222, not 22", fix_contains="--ssh_port 2222"),
    passes("sshd-not-listening", "port-22", lambda: launcher(sshd_listening_ports=[22, 2222])),
    skips("sshd-not-listening", "login-node-outside-the-hostfile", lambda: launcher(sshd_listening_ports=[]),
          "no launch logs into this machine over SSH", context={"needs_sshd": False}),
    fail("ssh-dir-permissions", "group-writable", lambda: launcher(ssh_dir_mode=0o775, authorized_keys_mode=0o666),
         "~/.ssh has mode 0775: writable by group or others", count=2, fix_contains="chmod 600 ~/.ssh/authorized_keys"),
    passes("ssh-dir-permissions", "tidy", healthy_gpu_node),
    passes("ssh-dir-permissions", "readable-keys-are-fine", lambda: launcher(ssh_dir_mode=0o755,
                                                                             authorized_keys_mode=0o644)),
    skips("ssh-dir-permissions", "no-ssh-dir", lambda: launcher(ssh_dir_mode=Unavailable("/root/.ssh: No such file")),
          "No such file"),
    fail("dsenv-invalid", "blank-and-comment", lambda: dsenv("PATH=/opt/venv/bin:$PATH", "", "# NCCL_DEBUG=INFO"),
         "blank line", where="/root/.deepspeed_env:2", count=2),
    fail("dsenv-invalid", "quoted-value-with-space", lambda: dsenv('TRAIN_ARGS="--fp16 --zero 3"'),
         "TRAIN_ARGS's value is already in double quotes",
         fix_contains="remove the quotes: TRAIN_ARGS=--fp16 --zero 3"),
    fail("dsenv-invalid", "old-deepspeed-unquoted", lambda: dsenv("TRAIN_ARGS=--fp16 --zero 3", deepspeed="0.14.4"),
         "exports it without quotes"),
    fail("dsenv-invalid", "on-a-worker-it-is-a-warning", lambda: dsenv("A=1", ""),
         "(this matters when a job is launched from gpu-node-0)", severity=Severity.WARNING,
         context={"is_launch_node": False}),
    skips("dsenv-invalid", "one-host-launch-reads-no-file", lambda: dsenv("A=1", ""), "without pdsh",
          context={"multi_node": False}),
    passes("dsenv-invalid", "clean", healthy_gpu_node),
    passes("dsenv-invalid", "warnings-only", lambda: dsenv("A=1", "A=2")),
    skips("dsenv-invalid", "no-file", lambda: launcher(deepspeed_env_files=[dsenv_file(None)]), "no .deepspeed_env"),
    fail("dsenv-risky", "duplicate", lambda: dsenv("NCCL_DEBUG=INFO", "NCCL_DEBUG=WARN"),
         "NCCL_DEBUG is also set on line 1; DeepSpeed keeps the last value (line 2)", where="/root/.deepspeed_env:2"),
    fail("dsenv-risky", "home-and-cwd", lambda: dsenv("NCCL_DEBUG=INFO", cwd_lines=["NCCL_DEBUG=WARN"]),
         "NCCL_DEBUG is set in /root/.deepspeed_env:1 and /work/.deepspeed_env:1", where="/work/.deepspeed_env:1"),
    passes("dsenv-risky", "clean", healthy_gpu_node),
    fail("cuda-visible-devices-set", "set", lambda: with_env(healthy_gpu_node(), CUDA_VISIBLE_DEVICES="0,1"),
         "CUDA_VISIBLE_DEVICES=0,1 is set in the non-interactive environment"),
    passes("cuda-visible-devices-set", "unset", healthy_gpu_node),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_launcher_check(case: CheckCase) -> None:
    assert_case(case)


def test_every_launcher_check_has_a_failing_and_a_passing_case() -> None:
    assert_table_covers("launcher", CASES)


@pytest.mark.parametrize(("version", "quoted"), [("0.19.8", True), ("0.15.2", True), ("0.15.1", False),
                                                 ("0.14.4+cu121", False), ("0.16.0rc1", True)])
def test_value_quoting_follows_the_deepspeed_version(version: str, quoted: bool) -> None:
    facts = with_section(healthy_gpu_node(), "python_env", deepspeed_version=version)
    assert quotes_values(facts) is quoted


def test_a_dsenv_problem_carries_its_own_fix() -> None:
    findings = run_check("dsenv-invalid", dsenv("A=1", ""))
    assert findings[0].fix == "delete line 2"
