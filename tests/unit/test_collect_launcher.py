"""What DeepSpeed's pdsh launcher needs: pdsh and its rcmd, ssh, rsync, sshd ports, ~/.ssh, .deepspeed_env."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clusterkit.core.facts_codec import from_jsonable
from clusterkit.node.collect.launcher import (
    collect_launcher,
    configured_sshd_ports,
    deepspeed_env_paths,
    parse_listening_sockets,
    parse_pdsh_version,
    read_sshd_ports,
    read_text_file,
)
from clusterkit.node.collect.node import CollectOptions
from clusterkit.node.facts import LauncherFacts, Unavailable, known, to_jsonable

PROC = Path(__file__).resolve().parents[1] / "fixtures" / "synthetic-proc-gpu-node"
PDSH_V = "pdsh-2.34 (+readline+debug)\nrcmd modules: ssh,rsh,exec (default: rsh)\nmisc modules: genders\n"


def _tool(directory: Path, name: str, body: str = "exit 0\n") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


# ---------------------------------------------------------------------------------------------- pdsh


def test_pdsh_version_lists_rcmd_modules_and_the_default() -> None:
    assert parse_pdsh_version(PDSH_V) == (["ssh", "rsh", "exec"], "rsh")


def test_pdsh_built_with_ssh_as_default() -> None:
    assert parse_pdsh_version("pdsh-2.31\nrcmd modules: ssh,exec (default: ssh)\n") == (["ssh", "exec"], "ssh")


def test_pdsh_version_without_a_default_or_an_rcmd_line_gives_reasons() -> None:
    modules, default = parse_pdsh_version("rcmd modules: ssh\n")
    assert modules == ["ssh"] and isinstance(default, Unavailable)
    modules, default = parse_pdsh_version("pdsh: command not found\n")
    assert isinstance(modules, Unavailable) and isinstance(default, Unavailable)


# -------------------------------------------------------------------------------------------- sshd


def test_listening_sockets_of_proc_net_tcp_by_inode() -> None:
    sockets = parse_listening_sockets((PROC / "net" / "tcp").read_text())
    assert sockets == {23456: 22, 23457: 2222, 40001: 29500, 19876: 631}  # the ESTABLISHED line is not


def test_sshd_ports_are_the_listening_sockets_sshd_processes_hold() -> None:
    # sshd pid 1234 holds *:22 (v4 and v6), pid 1300 *:2222; python3 holds 29500; 631 has no visible owner.
    assert read_sshd_ports(str(PROC), sshd_config_path="/nonexistent") == [22, 2222]


def test_no_sshd_process_means_no_ports(tmp_path: Path) -> None:
    (tmp_path / "net").mkdir()
    shutil.copy(PROC / "net" / "tcp", tmp_path / "net" / "tcp")
    assert read_sshd_ports(str(tmp_path)) == []


def test_unreadable_proc_net_is_a_reason(tmp_path: Path) -> None:
    ports = read_sshd_ports(str(tmp_path))
    assert isinstance(ports, Unavailable) and "tcp6" in ports.reason


def _proc_without_readable_sshd_fds(tmp_path: Path) -> Path:
    """The synthetic /proc as a non-root agent sees it: sshd's fd directories cannot be listed."""
    proc = tmp_path / "proc"
    shutil.copytree(PROC, proc, symlinks=True)
    for pid in ("1234", "1300"):
        shutil.rmtree(proc / pid / "fd")
        (proc / pid / "fd").write_text("")  # listing it now fails, as EACCES would
    return proc


def test_without_sshd_fds_the_ports_its_command_line_and_config_name_are_used(tmp_path: Path) -> None:
    proc = _proc_without_readable_sshd_fds(tmp_path)
    config = tmp_path / "sshd_config"
    config.write_text("Include /etc/ssh/sshd_config.d/*.conf\n#Port 22\n")
    # pid 1234 has no -p: its config says 22 (the default); pid 1300 runs with -p 2222.
    assert read_sshd_ports(str(proc), sshd_config_path=str(config)) == [22, 2222]
    config.write_text("Port 2200\n")  # nothing listens on 2200; 22 is then not sshd's
    assert read_sshd_ports(str(proc), sshd_config_path=str(config)) == [2222]


def test_sshd_config_ports_default_to_22() -> None:
    assert configured_sshd_ports("#Port 22\nPasswordAuthentication no\n") == [22]
    assert configured_sshd_ports("Port 2222\nport 22 # both\n") == [2222, 22]


def test_sshd_ports_of_this_machine_match_ss_when_root() -> None:
    ports = read_sshd_ports()
    assert known(ports)
    if os.geteuid() != 0 or not shutil.which("ss"):
        return
    listing = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout
    from_ss = set()
    for line in listing.splitlines():
        if '"sshd"' in line:
            from_ss.add(int(line.split()[3].rsplit(":", 1)[1]))
    assert set(ports) == from_ss


# ------------------------------------------------------------------------------------ .deepspeed_env


def test_env_file_paths_are_where_deepspeeds_runner_looks() -> None:
    assert deepspeed_env_paths({}, "/home/a", "/work") == [Path("/home/a/.deepspeed_env"),
                                                            Path("/work/.deepspeed_env")]
    assert deepspeed_env_paths({"DS_ENV_FILE": "ds.env"}, "/home/a", "/work") == [
        Path("/home/a/ds.env"), Path("/work/ds.env")]
    # os.path.join semantics: an absolute DS_ENV_FILE is read from the same place twice: one file.
    assert deepspeed_env_paths({"DS_ENV_FILE": "/etc/ds.env"}, "/h", "/w") == [Path("/etc/ds.env")]
    # Launched from the home directory, ~ and . are one file too (listed once, judged once).
    assert deepspeed_env_paths({}, "/home/a", "/home/a") == [Path("/home/a/.deepspeed_env")]


def test_the_installed_runner_still_reads_those_paths() -> None:
    # Read the source rather than import it: importing the runner imports torch (~2 s).
    spec = importlib.util.find_spec("deepspeed")
    if spec is None or spec.origin is None:
        pytest.skip("deepspeed is not installed here")
    source = (Path(spec.origin).parent / "launcher" / "runner.py").read_text()
    assert re.search(r"""DEEPSPEED_ENVIRONMENT_NAME = os\.getenv\(["']DS_ENV_FILE["'], ["']\.deepspeed_env["']\)""",
                     source)
    assert re.search(r"""DEEPSPEED_ENVIRONMENT_PATHS = \[os\.path\.expanduser\(["']~["']\), ["']\.["']\]""",
                     source)
    assert "var.split('=', maxsplit=1)" in source  # why lines must be kept raw: checks lint them


def test_env_file_lines_are_kept_raw_as_readlines_gives_them(tmp_path: Path) -> None:
    path = tmp_path / ".deepspeed_env"
    path.write_bytes(b'PATH=/env/bin:/usr/bin\r\n# NCCL_DEBUG=INFO\n\nNCCL_SOCKET_IFNAME="bond0"\nLAST=1')
    path.chmod(0o640)
    facts = read_text_file(path)
    assert facts.exists and facts.mode == 0o640
    assert facts.lines == ["PATH=/env/bin:/usr/bin", "# NCCL_DEBUG=INFO", "", 'NCCL_SOCKET_IFNAME="bond0"', "LAST=1"]
    with open(path) as f:  # what DeepSpeed's runner iterates over
        assert facts.lines == [line.rstrip("\n") for line in f.readlines()]


def test_a_missing_env_file_says_so(tmp_path: Path) -> None:
    facts = read_text_file(tmp_path / ".deepspeed_env")
    assert not facts.exists
    assert isinstance(facts.lines, Unavailable) and "does not exist" in facts.lines.reason


def test_an_empty_env_file_has_no_lines_and_a_lone_newline_is_one_blank_line(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("")
    (tmp_path / "blank").write_text("\n")
    assert read_text_file(tmp_path / "empty").lines == []
    assert read_text_file(tmp_path / "blank").lines == [""]


# ---------------------------------------------------------------------------------- collect_launcher


def test_collect_launcher_in_a_prepared_home(tmp_path: Path) -> None:
    home, work, bin_dir = tmp_path / "home", tmp_path / "work", tmp_path / "bin"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh").chmod(0o755)
    (home / ".ssh" / "authorized_keys").write_text("ssh-ed25519 AAAA test\n")
    (home / ".ssh" / "authorized_keys").chmod(0o664)
    work.mkdir()
    (work / ".deepspeed_env").write_text("NCCL_IB_DISABLE=1\n")
    _tool(bin_dir, "pdsh", f"cat <<'EOF'\n{PDSH_V}EOF\n")
    _tool(bin_dir, "ssh")
    env = {"HOME": str(home), "PATH": str(bin_dir)}
    facts = collect_launcher(CollectOptions(cwd=str(work)), proc_root=str(PROC), environ=env,
                             sshd_config_path="/nonexistent")
    assert facts.pdsh_path == str(bin_dir / "pdsh")
    assert facts.pdsh_rcmd_modules == ["ssh", "rsh", "exec"] and facts.pdsh_default_rcmd == "rsh"
    assert facts.ssh_path == str(bin_dir / "ssh")
    assert facts.rsync_path == Unavailable("rsync not found on PATH")
    assert facts.sshd_listening_ports == [22, 2222]
    assert facts.ssh_dir_mode == 0o755 and facts.authorized_keys_mode == 0o664
    assert [f.path for f in facts.deepspeed_env_files] == [str(home / ".deepspeed_env"),
                                                           str(work / ".deepspeed_env")]
    assert [f.exists for f in facts.deepspeed_env_files] == [False, True]
    assert facts.deepspeed_env_files[1].lines == ["NCCL_IB_DISABLE=1"]
    assert facts.cwd == str(work) and facts.cwd_exists is True


def test_missing_pdsh_and_ssh_dir_are_reasons(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "PATH": str(tmp_path / "empty-bin")}
    facts = collect_launcher(CollectOptions(cwd=str(tmp_path / "gone")), proc_root=str(PROC), environ=env)
    assert facts.pdsh_path == Unavailable("pdsh not found on PATH")
    assert facts.pdsh_rcmd_modules == facts.pdsh_default_rcmd == facts.pdsh_path
    assert isinstance(facts.ssh_dir_mode, Unavailable) and isinstance(facts.authorized_keys_mode, Unavailable)
    assert facts.cwd_exists is False


def test_a_hanging_pdsh_is_reported_within_the_timeout(tmp_path: Path) -> None:
    _tool(tmp_path, "pdsh", "sleep 30\n")
    facts = collect_launcher(CollectOptions(), environ={"HOME": str(tmp_path), "PATH": str(tmp_path)},
                             command_timeout_s=0.5)
    assert isinstance(facts.pdsh_rcmd_modules, Unavailable)
    assert "did not finish" in facts.pdsh_rcmd_modules.reason


def test_collect_launcher_on_this_machine() -> None:
    facts = collect_launcher(CollectOptions())
    pdsh = shutil.which("pdsh")
    if pdsh:
        assert facts.pdsh_path == pdsh
        assert known(facts.pdsh_rcmd_modules) and "ssh" in facts.pdsh_rcmd_modules
    assert facts.ssh_path == (shutil.which("ssh") or Unavailable("ssh not found on PATH"))
    assert known(facts.sshd_listening_ports)
    assert len(facts.deepspeed_env_files) == 2
    assert facts.cwd == str(Path.cwd()) and facts.cwd_exists is True
    assert from_jsonable(LauncherFacts, json.loads(json.dumps(to_jsonable(facts)))) == facts


# ------------------------------------------------------------------------------------------ fuzzing


@given(st.text())
def test_malformed_pdsh_and_proc_text_never_raises(text: str) -> None:
    parse_pdsh_version(text)
    parse_listening_sockets(text)
    configured_sshd_ports(text)


TCP_PIECES = [*(PROC / "net" / "tcp").read_text().splitlines(), *(PROC / "net" / "tcp6").read_text().splitlines(),
              "   9: 00000000:ZZZZ 00000000:0000 0A 0 0 0 0 0 0 x", "0A", "   1: :0016 x 0A a b c d e f g"]


@given(st.lists(st.sampled_from(TCP_PIECES), max_size=20))
def test_shuffled_proc_net_tcp_lines_give_valid_ports(lines: list[str]) -> None:
    for inode, port in parse_listening_sockets("\n".join(lines)).items():
        assert inode >= 0 and 0 <= port <= 0xFFFF


def test_the_training_script_is_looked_up_from_the_launch_directory(tmp_path: Path) -> None:
    # issue 19, M5: each node's launcher runs `cd <launch dir>; <python> ... train.py`.
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "train.py").write_text("print(1)\n")
    env = {"HOME": str(tmp_path), "PATH": ""}

    def facts(script: str | None) -> LauncherFacts:
        return collect_launcher(CollectOptions(cwd=str(tmp_path / "job"), script=script), proc_root=str(PROC),
                                environ=env)

    assert (facts("train.py").script, facts("train.py").script_exists) == ("train.py", True)
    assert facts("eval.py").script_exists is False
    assert facts(str(tmp_path / "job" / "train.py")).script_exists is True
    unnamed = facts(None)
    assert isinstance(unnamed.script, Unavailable) and isinstance(unnamed.script_exists, Unavailable)
    assert from_jsonable(LauncherFacts, json.loads(json.dumps(to_jsonable(facts("eval.py"))))) == facts("eval.py")
