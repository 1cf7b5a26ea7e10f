"""The shipped agent runs from its zipapp on a bare python3 (3.8 too) and prints one framed result."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from clusterkit.cluster.remote import RemoteError, agent_zipapp, parse_agent_output
from clusterkit.core.facts_codec import from_jsonable
from clusterkit.node.agent import AGENT_PROTOCOL, RESULT_MARKER
from clusterkit.node.facts import SCHEMA_VERSION, CollectReply, ConnectProbe, PortHoldProbe

PYTHON38 = Path("/root/.pyenv/versions/3.8.18/bin/python")
WIRE = {"protocol": AGENT_PROTOCOL, "schema_version": SCHEMA_VERSION}


@pytest.fixture(scope="module")
def zipapp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("agent") / "agent.pyz"
    path.write_bytes(agent_zipapp())
    return path


def run_agent_locally(python: str, zipapp: Path, *args: str) -> str:
    proc = subprocess.run([python, str(zipapp), *args], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(Path.home())})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def interpreters() -> list[str]:
    found = ["/usr/bin/python3"]
    if PYTHON38.exists():
        found.append(str(PYTHON38))
    return found


@pytest.mark.parametrize("python", interpreters())
def test_agent_collects_facts_with_a_bare_system_python(python: str, zipapp: Path) -> None:
    out = run_agent_locally(python, zipapp, "collect", "--python", sys.executable, "--timeout", "60")
    facts = from_jsonable(CollectReply, parse_agent_output(out, "local").result).facts
    assert facts.host.agent_python.startswith(subprocess.check_output(
        [python, "-c", "import platform; print(platform.python_version())"], text=True).strip())


def test_agent_zipapp_carries_pynvml_so_nodes_need_no_install(zipapp: Path) -> None:
    import zipfile

    names = zipfile.ZipFile(zipapp).namelist()
    assert "pynvml.py" in names
    assert "clusterkit/node/collect/pyprobe.py" in names
    assert not any(name.startswith("clusterkit/commands") for name in names)


def test_result_line_is_found_among_login_banner_noise() -> None:
    noise = "Welcome to node7!\nyour quota: 90%\n"
    line = RESULT_MARKER + json.dumps({**WIRE, "result": {"x": 1}, "clock_unix": 1000.5})
    reply = parse_agent_output(noise + line + "\n", "node7", received_at=1000.0)
    assert reply.result == {"x": 1}
    assert reply.clock_offset_s == 0.5


def test_missing_result_line_is_a_remote_error_with_the_output_tail() -> None:
    with pytest.raises(RemoteError, match=r"printed no result.*bash: python3: command not found"):
        parse_agent_output("bash: python3: command not found\n", "node7")


def test_agent_error_is_reported_with_its_reason() -> None:
    line = RESULT_MARKER + json.dumps({**WIRE, "error": "OSError: boom"})
    with pytest.raises(RemoteError, match="agent on node7 failed: OSError: boom"):
        parse_agent_output(line, "node7")


def test_listen_reports_a_busy_port(zipapp: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        out = run_agent_locally("/usr/bin/python3", zipapp, "listen", "--port", str(port), "--seconds", "1")
    assert from_jsonable(PortHoldProbe, parse_agent_output(out, "local").result).free is False


def test_connect_reaches_a_listener(zipapp: Path) -> None:
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        out = run_agent_locally("/usr/bin/python3", zipapp, "connect", "--host", "127.0.0.1", "--port",
                                str(port), "--timeout", "3")
    assert from_jsonable(ConnectProbe, parse_agent_output(out, "local").result).ok is True


def test_collect_runs_the_probes_beside_the_facts(zipapp: Path) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = run_agent_locally("/usr/bin/python3", zipapp, "collect", "--python", "/usr/bin/python3",
                            "--timeout", "30", "--listen-port", str(port), "--listen-expect", "1",
                            "--listen-seconds", "10", "--connect", f"127.0.0.1:{port}", "--peers", "nodeA")
    reply = from_jsonable(CollectReply, parse_agent_output(out, "local").result)
    assert reply.listen == PortHoldProbe(port, True, "", ["127.0.0.1"])
    assert reply.connect is not None and reply.connect.ok
    assert reply.ssh is None
    assert reply.facts.launcher.ssh_trust.known_hosts == {"nodeA": []}  # type: ignore[union-attr]


def test_the_agent_archive_is_the_same_from_one_run_to_the_next() -> None:
    script = "from clusterkit.cluster.remote import agent_digest; print(agent_digest())"
    digests = {subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
               for _ in range(2)}
    assert len(digests) == 1


@pytest.mark.parametrize(("wire", "said", "fix"), [
    ({"protocol": AGENT_PROTOCOL - 1, "schema_version": SCHEMA_VERSION}, "the node's agent is older", "rm -rf"),
    ({"protocol": AGENT_PROTOCOL + 1, "schema_version": SCHEMA_VERSION}, "the node's agent is newer",
     "upgrade clusterkit on this machine"),
    ({}, "speaks protocol None", "upgrade clusterkit"),
])
def test_an_agent_of_another_version_is_refused_saying_which_side_to_upgrade(
        wire: dict[str, int], said: str, fix: str) -> None:
    line = RESULT_MARKER + json.dumps({**wire, "result": {}})
    with pytest.raises(RemoteError, match=said) as caught:
        parse_agent_output(line, "node7")
    assert caught.value.fix is not None and fix in caught.value.fix


@pytest.mark.parametrize("python", interpreters()[-1:])
def test_the_agent_reads_the_training_script_the_survey_names(python: str, zipapp: Path, tmp_path: Path) -> None:
    # issue 19, M5: the head's collect arguments and the agent's parser agree on --script.
    from clusterkit.survey import SurveyOptions

    (tmp_path / "train.py").write_text("print(1)\n")
    args = SurveyOptions(python="/usr/bin/python3", cwd=str(tmp_path), timeout_s=30, script="train.py").collect_args()
    out = run_agent_locally(python, zipapp, *args)
    launcher = from_jsonable(CollectReply, parse_agent_output(out, "local").result).facts.launcher
    assert (launcher.script, launcher.script_exists) == ("train.py", True)  # type: ignore[union-attr]


def test_the_sshd_the_head_came_through_is_read_from_the_sessions_ssh_connection() -> None:
    from clusterkit.node.agent import ssh_server_address

    assert ssh_server_address("10.0.0.9 51234 10.0.0.2 2222") == "10.0.0.2:2222"
    assert ssh_server_address("fe80::1 51234 fe80::2 22") == "fe80::2:22"  # the port is after the last colon
    assert ssh_server_address("") is None  # not an SSH session: no sshd to read keys from
