"""Field test regressions: clusters built unlike the default harness, as new users run them.

The launching machine is a login node outside the hostfile (node1; the hostfile names node2-node4),
homes are private per node, one node's sshd serves its host key from a path named only in an
included, root-only file, and node2 already has a ``.deepspeed_env`` of the user's. Each test names
the item of the field-test issue it guards.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.cluster.clusterkit_run import REPO, bootstrap, clusterkit, doctor_json, failures
from tests.cluster.conftest import launch_or_skip
from tests.cluster.harness import Cluster, Node
from tests.cluster.node import CommandResult

WHEREAMI = "tests/cluster/scripts/whereami.py"
USERS_DSENV = 'PATH=/custom/bin:/usr/bin\nFOO="quoted value"\n'
PROMPT = "SSH password for the nodes"


@dataclass
class Site:
    cluster: Cluster
    python: str
    login: Node
    workers: list[Node]
    dry_run: CommandResult
    first_run: CommandResult

    @property
    def hostfile(self) -> str:
        return self.cluster.hostfile_text(nodes=self.workers)


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    """Four nodes; node1 is the login node and has no sshd; node3 serves its host key from its own path;
    node2 holds the user's own .deepspeed_env. Bootstrapped once from node1 (after a dry run)."""
    cluster = launch_or_skip(4)
    try:
        python = cluster.install_python_env(prebuilt_ops=True)
        login, *workers = cluster.nodes
        login.run("kill $(cat /etc/ssh/sshd.pid)", user="root", check=True)
        workers[1].serve_host_key_from_its_own_path()
        workers[0].put_file("/home/ckuser/.deepspeed_env", USERS_DSENV)
        hostfile = cluster.hostfile_text(nodes=workers)
        dry_run = bootstrap(cluster, python, "--dry-run", head=login, hostfile=hostfile)
        first_run = bootstrap(cluster, python, head=login, hostfile=hostfile)
        yield Site(cluster, python, login, workers, dry_run, first_run)
    finally:
        cluster.stop()


def launch(site: Site, args: str, timeout: float = 300, hostfile: str = "~/hostfile") -> CommandResult:
    return clusterkit(site.login, f"launch {hostfile} --python {site.python} --connect-timeout 3 {args}",
                      timeout=timeout)


def ranks(output: str) -> list[dict[str, str]]:
    """The WHEREAMI lines the ranks printed, as dicts."""
    found = []
    for line in output.splitlines():
        if "WHEREAMI " in line:
            fields = line.split("WHEREAMI ", 1)[1].split(" ")
            found.append(dict(field.split("=", 1) for field in fields if "=" in field))
    return found


def test_one_bootstrap_run_from_a_login_node_outside_the_hostfile_succeeds(site: Site) -> None:
    result = site.first_run
    assert result.rc == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # Item 14: the login node has no sshd, and nothing asks it for one (pdsh never logs into it).
    assert "localhost" not in result.stdout + result.stderr
    assert "FAILED" not in result.stdout


def test_the_launching_machine_gets_the_deepspeed_env_the_launcher_exports(site: Site) -> None:
    # Item 3: DeepSpeed's runner reads ~/.deepspeed_env only where it runs: on the login node.
    values = dict(line.split("=", 1) for line in site.login.read_file("/home/ckuser/.deepspeed_env").splitlines())
    assert values["NCCL_SOCKET_IFNAME"] == "eth0"
    ran = launch(site, f"-- {WHEREAMI}")
    assert ran.rc == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    seen = ranks(ran.stdout)
    assert sorted(r["host"] for r in seen) == ["node2", "node3", "node4"]
    assert {r["NCCL_SOCKET_IFNAME"] for r in seen} == {"eth0"}


@pytest.mark.parametrize("selection", ["--include node3", "hostfile-of-one"])
def test_a_one_node_selection_trains_on_that_node_not_on_the_login_node(site: Site, selection: str) -> None:
    # Item 1: with one active host DeepSpeed runs locally unless told --force_multi.
    if selection == "hostfile-of-one":
        site.login.put_file("/home/ckuser/hostfile-node3", "node3 slots=1\n")
        ran = launch(site, f"-- {WHEREAMI}", hostfile="~/hostfile-node3")
    else:
        ran = launch(site, f"{selection} -- {WHEREAMI}")
    assert ran.rc == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert [r["host"] for r in ranks(ran.stdout)] == ["node3"]


def test_a_hostfile_naming_only_this_machine_needs_no_ssh(site: Site) -> None:
    # Item 1: `localhost slots=1` on a machine without sshd (the login node): no SSH anywhere.
    site.login.put_file("/home/ckuser/hostfile-local", "localhost slots=1\n")
    report = clusterkit(site.login, f"doctor ~/hostfile-local --json --python {site.python}")
    assert report.rc in (0, 1), report.stderr[-3000:]
    assert failures(_json(report), "node-unreachable") == []
    assert failures(_json(report), "sshd-not-listening") == []
    line = launch(site, f"--print-only -- {WHEREAMI}", hostfile="~/hostfile-local")
    assert line.rc == 0, line.stderr[-3000:]
    words = shlex.split(line.stdout)
    assert "--no_ssh_check" in words and "--force_multi" not in words
    assert words[words.index("--master_addr") + 1] == "127.0.0.1"
    ran = site.login.run(f"cd {shlex.quote(str(REPO))} && {line.stdout.strip()}", timeout=120)
    assert ran.rc == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert [r["host"] for r in ranks(ran.stdout)] == ["node1"]


def test_pdsh_is_judged_on_the_launching_machine_only(site: Site) -> None:
    # Item 5: pdsh runs on the launching machine; workers need only sshd.
    site.workers[0].hide_binary("/usr/bin/pdsh")
    try:
        ran = launch(site, f"-- {WHEREAMI}")
        assert ran.rc == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
        assert "pdsh-missing" not in ran.stderr
    finally:
        site.workers[0].heal()
    site.login.hide_binary("/usr/bin/pdsh")
    try:
        stopped = launch(site, f"-- {WHEREAMI}")
        assert stopped.rc == 1
        assert "[node1] pdsh-missing" in stopped.stderr
        assert "not launching" in stopped.stderr
    finally:
        site.login.heal()


def test_ssh_trust_is_judged_from_the_keys_sshd_really_serves(site: Site) -> None:
    # Item 6: node3's sshd serves a key named in an included file the user cannot read.
    report = doctor_json(site.cluster, site.python, head=site.login)
    assert failures(report, "ssh-trust-incomplete") == []
    errors = [(f["check"], f["host"], f["message"]) for f in report["findings"]
              if f["outcome"] == "fail" and f["severity"] == "error"]
    assert errors == []
    live = doctor_json(site.cluster, site.python, "--mesh full", head=site.login)
    assert failures(live, "ssh-mesh-broken") == []


def test_the_users_path_is_kept_and_quoted_values_are_mended_with_their_line(site: Site) -> None:
    # Items 4 and 8, in the dry run and the real one alike.
    for said in (site.dry_run.stderr, site.first_run.stderr):
        flat = " ".join(said.split())
        assert "node2:~/.deepspeed_env:2: removed the quotes around FOO's value" in flat
        assert "kept /custom/bin, /usr/bin" in flat
    assert site.dry_run.rc == 0, site.dry_run.stdout[-3000:] + site.dry_run.stderr[-3000:]
    assert "ValueError" not in site.dry_run.stderr + site.first_run.stderr
    values = dict(line.split("=", 1) for line in site.workers[0].read_file("/home/ckuser/.deepspeed_env").splitlines())
    assert values["PATH"].startswith(site.python.rsplit("/", 1)[0] + ":/custom/bin:/usr/bin:")
    assert values["FOO"] == "quoted value"


def test_doctor_launched_from_home_judges_the_home_file_once(site: Site) -> None:
    # Item 10: launched from ~, ~/.deepspeed_env and ./.deepspeed_env are one file.
    site.login.run("printf 'A=1\\nA=2\\n' >> ~/.deepspeed_env", check=True)
    try:
        result = site.login.run(f"cd ~ && {shlex.quote(sys.executable)} -m clusterkit doctor ~/hostfile --json "
                                f"--python {site.python}", timeout=180)
        assert result.rc in (0, 1), result.stderr[-3000:]
        risky = [f["message"] for f in failures(_json(result), "dsenv-risky")]
        assert len(risky) == 1 and "also set on line" in risky[0], risky
        assert not any(re.search(r"set in (\S+) and \1", m) for m in risky)
    finally:
        site.login.run("sed -i '/^A=/d' ~/.deepspeed_env", check=True)


def test_input_that_cannot_work_is_refused(site: Site) -> None:
    # Item 9: an interpreter that does not exist, and one machine listed twice.
    nope = bootstrap(site.cluster, "/opt/nope/bin/python", head=site.login, hostfile=site.hostfile)
    assert nope.rc == 2
    assert "--python /opt/nope/bin/python: no such interpreter on this machine" in nope.stderr
    assert "/opt/nope" not in site.workers[1].read_file("/home/ckuser/.deepspeed_env")
    twice = site.hostfile + f"{site.workers[0].ip} slots=1\n"
    site.login.put_file("/home/ckuser/hostfile-twice", twice)
    stopped = launch(site, f"--trust-new-hosts -- {WHEREAMI}", hostfile="~/hostfile-twice")
    assert stopped.rc == 1
    assert "hostfile-duplicate-machine" in stopped.stderr
    assert f"node2 and {site.workers[0].ip} are the same machine" in " ".join(stopped.stderr.split())


def test_a_synced_directory_settles_after_one_run(site: Site) -> None:
    # Item 9: the shared-filesystem probe must not leave the source changed.
    site.login.run("mkdir -p /opt/code && echo 'print(1)' > /opt/code/train.py", user="root", check=True)
    site.login.run("chown -R ckuser: /opt/code", user="root", check=True)
    for node in site.workers:
        node.run("mkdir -p /opt/code && chown ckuser: /opt/code", user="root", check=True)
    first = bootstrap(site.cluster, site.python, "--sync /opt/code", head=site.login, hostfile=site.hostfile)
    assert first.rc == 0, first.stdout[-3000:] + first.stderr[-3000:]
    again = bootstrap(site.cluster, site.python, "--sync /opt/code", head=site.login, hostfile=site.hostfile)
    assert again.rc == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "copied" not in again.stderr
    assert "changed" not in again.stdout
    for node in site.workers:
        assert node.read_file("/opt/code/train.py") == "print(1)\n"


def test_two_doctors_at_once_do_not_break_each_other(site: Site) -> None:
    # Item 7: both ship the agent at the same moment, four times over.
    results: list[CommandResult] = []

    def doctor() -> None:
        results.append(clusterkit(site.login, f"doctor ~/hostfile --json --no-probes --python {site.python}"))

    for _ in range(4):
        for node in site.workers:
            node.run("rm -rf /tmp/clusterkit-$(id -u)/agent-*", check=True)
        runs = [threading.Thread(target=doctor) for _ in range(2)]
        for run in runs:
            run.start()
        for run in runs:
            run.join(240)
    assert len(results) == 8
    for result in results:
        assert result.rc in (0, 1), result.stderr[-3000:]
        assert failures(_json(result), "node-unreachable") == [], result.stdout[-2000:]


def test_a_dead_address_and_a_frozen_node_are_explained_without_tracebacks(site: Site) -> None:
    # Items 13 and 15: what the network said, with its own fix; no library traceback on the terminal.
    dead = f"{site.cluster.subnet}.250"
    site.login.put_file("/home/ckuser/hostfile-faults", f"node2 slots=1\nnode4 slots=1\n{dead} slots=1\n")
    site.workers[2].freeze()
    try:
        result = clusterkit(site.login, f"doctor ~/hostfile-faults --python {site.python} --timeout 10 "
                                        "--connect-timeout 4", timeout=120)
    finally:
        site.workers[2].thaw()
    said = " ".join(result.stdout.split())
    assert result.rc == 1
    assert f"{dead} port 22: no route to host" in said
    assert f"fix: check the address in the hostfile and that {dead} is powered on" in said
    assert "node4 did not answer" in said
    assert "Traceback" not in result.stderr and "Exception (client)" not in result.stderr


def test_ask_password_asks_only_when_a_node_refuses_the_key(site: Site) -> None:
    # Item 11: every node takes the key: no prompt at all.
    command = (f"cd {shlex.quote(str(REPO))} && {shlex.quote(sys.executable)} -m clusterkit bootstrap ~/hostfile "
               f"--python {site.python} --ask-password --connect-timeout 3")
    quiet = site.login.run_in_terminal(command, {PROMPT: site.cluster.password}, timeout=300)
    assert quiet.rc == 0, quiet.stdout[-3000:]
    assert quiet.stderr == ""  # no prompt was shown
    # A node refuses the key and standard input is not a terminal: a clear stop, not a crash.
    site.workers[2].run("sed -i '/clusterkit@node1/d' ~/.ssh/authorized_keys", check=True)
    try:
        piped = site.login.run(command, timeout=300)
        assert piped.rc == 1, piped.stdout[-3000:] + piped.stderr[-3000:]
        said = " ".join((piped.stdout + piped.stderr).split())
        assert "--ask-password needs a terminal" in said
        assert "internal error" not in said and "EOFError" not in said
        # From a terminal it asks once, and only now.
        asked = site.login.run_in_terminal(command, {PROMPT: site.cluster.password}, timeout=300)
        assert asked.rc == 0, asked.stdout[-3000:]
        assert asked.stderr.count(PROMPT) == 1
    finally:
        bootstrap(site.cluster, site.python, head=site.login, hostfile=site.hostfile)


def test_a_changed_host_key_is_named_on_its_node_in_the_summary(site: Site) -> None:
    # Item 12: say which step failed where, not "ok" beside it.
    node4 = site.workers[2]
    node4.regenerate_host_keys()
    try:
        result = bootstrap(site.cluster, site.python, password=False, head=site.login, hostfile=site.hostfile)
        assert result.rc == 1
        lines = {line.split(":", 1)[0].strip(): line for line in result.stdout.splitlines() if ": " in line}
        assert "FAILED host-keys" in lines["node4"]
        assert "ok reachability" in lines["node4"]
        assert "later steps not run (the run stopped at host-keys)" in lines["node2"]
        assert "host-keys: host key of node4 CHANGED" in result.stdout
    finally:
        site.login.run("ssh-keygen -R node4 >/dev/null 2>&1; true")
        for node in site.workers:
            node.run(f"ssh-keygen -R node4 >/dev/null 2>&1; ssh-keygen -R {node4.ip} >/dev/null 2>&1; true")
        bootstrap(site.cluster, site.python, head=site.login, hostfile=site.hostfile)


def _json(result: CommandResult) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(result.stdout)
    return report


# --- Field test 2 (issue 19): bootstrap, the doctor's judgements and launch's preflight ---------------


def from_dir(site: Site, directory: str, args: str, timeout: float = 300) -> CommandResult:
    """``clusterkit ARGS`` on the login node, typed in ``directory`` as a user there would."""
    return site.login.run(f"cd {directory} && {shlex.quote(sys.executable)} -m clusterkit {args}", timeout=timeout)


def _flat(text: str) -> str:
    return " ".join(text.split())


def _dsenv_path(node: Node) -> list[str]:
    values = dict(line.split("=", 1) for line in node.read_file("/home/ckuser/.deepspeed_env").splitlines())
    return values["PATH"].split(":")


def test_a_relative_python_is_written_as_its_absolute_path(site: Site) -> None:
    # issue 19, W6: `--python envs/small/bin/python` became a relative PATH entry on every node.
    site.login.run("sed -i 's#^PATH=#PATH=ckenv/bin:#' ~/.deepspeed_env", check=True)  # as written before
    report = doctor_json(site.cluster, site.python, "--no-probes", head=site.login)
    risky = [f["message"] for f in failures(report, "dsenv-risky")]
    assert any("PATH entry 'ckenv/bin' is not an absolute path" in m for m in risky), risky
    ran = from_dir(site, "/opt", "bootstrap ~/hostfile --python ckenv/bin/python --connect-timeout 3")
    assert ran.rc == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert f"--python {site.python}" in ran.stdout
    for node in [site.login, *site.workers]:
        entries = _dsenv_path(node)
        assert entries[0] == "/opt/ckenv/bin", (node.name, entries)
        assert all(entry.startswith("/") for entry in entries), (node.name, entries)


def test_a_node_without_the_training_env_is_not_said_to_lack_gpus(site: Site) -> None:
    # issue 19, W11: the GPUs of a node whose env is missing are unknown, not missing.
    node3 = site.workers[1]
    node3.run("mv /opt/ckenv /opt/ckenv.hidden", user="root", check=True)
    try:
        report = doctor_json(site.cluster, site.python, "--no-probes", head=site.login)
    finally:
        node3.run("mv /opt/ckenv.hidden /opt/ckenv", user="root", check=True)
    assert [f["host"] for f in failures(report, "interpreter-missing")] == ["node3"]
    assert failures(report, "gpu-count-below-slots") == []
    assert failures(report, "nvml-unavailable") == []


def test_a_training_script_only_on_the_launching_machine_stops_the_launch(site: Site) -> None:
    # issue 19, M5: DeepSpeed's ranks fail with `can't open file` where the script is missing.
    for node in site.workers:
        node.run("mkdir -p /tmp/job", check=True)
    site.login.put_file("/tmp/job/train.py", "print('trained')\n")
    launch = f"launch ~/hostfile --python {site.python} --connect-timeout 3 --print-only -- train.py"
    stopped = from_dir(site, "/tmp/job", launch)
    assert stopped.rc == 1, stopped.stdout[-3000:] + stopped.stderr[-3000:]
    said = _flat(stopped.stderr)
    assert "code-path-missing" in said
    assert "training script /tmp/job/train.py does not exist on node[2-4]" in said
    for node in site.workers:
        node.put_file("/tmp/job/train.py", "print('trained')\n")
    line = from_dir(site, "/tmp/job", launch)
    assert line.rc == 0, line.stdout[-3000:] + line.stderr[-3000:]


def test_a_wrong_ifname_in_a_nodes_shell_startup_is_a_warning_when_the_launcher_overrides_it(site: Site) -> None:
    # issue 19, M8: the launching machine's .deepspeed_env exports NCCL_SOCKET_IFNAME=eth0 to every rank.
    node2 = site.workers[0]
    node2.run("echo 'export NCCL_SOCKET_IFNAME=ib9' >> ~/.bashrc", check=True)
    try:
        report = doctor_json(site.cluster, site.python, "--no-probes", head=site.login)
    finally:
        node2.run("sed -i '/NCCL_SOCKET_IFNAME=ib9/d' ~/.bashrc", check=True)
    found = failures(report, "nccl-socket-ifname-missing")
    assert [(f["host"], f["severity"]) for f in found] == [("node2", "warning")], found
    assert "overrides it with NCCL_SOCKET_IFNAME=eth0" in found[0]["message"]
    assert [f for f in report["findings"] if f["outcome"] == "fail" and f["severity"] == "error"] == []


def test_a_home_directory_is_synced_only_when_asked_and_never_its_secrets(site: Site) -> None:
    # issue 19, W4: `bootstrap --sync .` from ~ gave every node the head's private key and home-id.
    def secrets(node: Node) -> tuple[str, str]:
        return (node.read_file("/home/ckuser/.ssh/id_ed25519"), node.read_file("/home/ckuser/.clusterkit/home-id"))

    before = {node.name: secrets(node) for node in site.workers}
    site.login.put_file("/home/ckuser/notes.txt", "mine\n")
    sync = f"bootstrap ~/hostfile --python {site.python} --connect-timeout 3 --sync ."
    for dry_run in ("--dry-run", ""):
        refused = from_dir(site, "~", f"{sync} {dry_run}")
        assert refused.rc == 2, refused.stdout[-3000:] + refused.stderr[-3000:]
        said = _flat(refused.stderr)
        assert "that is your home directory" in said and "~/.ssh" in said and "--sync-home" in said, said
    assert site.workers[0].run("test -e ~/notes.txt").rc != 0
    copied = from_dir(site, "~", f"{sync} --sync-home")
    assert copied.rc == 0, copied.stdout[-3000:] + copied.stderr[-3000:]
    said = _flat(copied.stderr)
    assert "not copied (private keys, credentials and clusterkit's state stay on each machine)" in said
    assert ".clusterkit" in said and ".ssh" in said
    assert "one home shared" not in said
    for node in site.workers:
        assert node.read_file("/home/ckuser/notes.txt") == "mine\n"
        assert secrets(node) == before[node.name], node.name
