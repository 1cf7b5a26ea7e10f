"""The namespace cluster behaves like real hosts: names, addresses, private disks, sshd, faults, cleanup."""

from __future__ import annotations

import shlex
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import fabric
import paramiko
import pytest

from tests.cluster import pyenv, system
from tests.cluster.harness import Cluster, Node
from tests.cluster.system import ClusterError, ClusterUnavailable, NodeCommandTimeout

pytestmark = pytest.mark.cluster

StartCluster = Callable[..., Cluster]
VENV_PYTHON = str(pyenv.shared_venv() / "bin" / "python")


def ssh_client(host: str, cluster: Cluster, timeout: float = 5) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect(host, username=cluster.user, password=cluster.password, timeout=timeout,
                   banner_timeout=timeout, auth_timeout=timeout, look_for_keys=False, allow_agent=False)
    return client


def remote_stdout(client: paramiko.SSHClient, command: str, timeout: float = 10) -> str:
    _, stdout, _ = client.exec_command(command, timeout=timeout)
    return str(stdout.read().decode())


def host_leftovers(index: int | None = None) -> list[str]:
    """Harness netns, links and state dirs on the host (of cluster ``index`` only, when given: another
    test process's clusters may come and go meanwhile)."""
    names = [*system.host_netns(), *system.host_links()]
    dirs = [str(p) for p in system.STATE_ROOT.glob(system.STATE_DIR_PREFIX + "*")]
    found = [name for name in names if name.startswith("ckt")] + dirs
    return [name for name in found if index is None or system.index_of(Path(name).name) == index]


def live(pids: list[int]) -> list[int]:
    return [pid for pid in pids if Path(f"/proc/{pid}").exists()]


# --- a node is a host ------------------------------------------------------------------------------

def test_three_nodes_start_in_a_few_seconds(cluster: Cluster, record_property: Callable[..., None]) -> None:
    record_property("startup_seconds_3_nodes", round(cluster.startup_seconds, 2))
    assert [node.name for node in cluster.nodes] == ["node1", "node2", "node3"]
    assert cluster.startup_seconds < 10
    assert all(node.is_up and node.sshd_listening() for node in cluster.nodes)


def test_each_node_has_its_own_hostname_address_and_eth0(clean_cluster: Cluster) -> None:
    for node in clean_cluster.nodes:
        rc, out, _ = node.run("hostname; ip -4 -o addr show dev eth0; ip -o link show dev lo")
        hostname, eth0, lo = out.splitlines()
        assert rc == 0
        assert hostname == node.name
        assert f"inet {node.ip}/24" in eth0
        assert "UP" in lo
    assert len({node.ip for node in clean_cluster.nodes}) == 3


def test_each_node_starts_with_an_empty_home_and_opt_owned_by_the_test_user(clean_cluster: Cluster) -> None:
    for node in clean_cluster.nodes:
        rc, out, _ = node.run('whoami; echo "$HOME"; pwd; ls -A ~ /opt')
        assert rc == 0
        assert out.split() == ["ckuser", "/home/ckuser", "/home/ckuser", "/home/ckuser:", "/opt:"]


def test_homes_opt_and_tmp_are_private_to_each_node(clean_cluster: Cluster) -> None:
    node1, node2, _ = clean_cluster.nodes
    for path in ("/home/ckuser/.deepspeed_env", "/opt/marker", "/tmp/marker"):
        node1.put_file(path, "only on node1\n", user="root" if path.startswith("/opt") else None)
        assert node1.read_file(path) == "only on node1\n"
        assert node1.host_path(path).read_text() == "only on node1\n"
        assert node2.run(f"test -e {path}").rc == 1


def test_the_repo_and_usr_are_shared_like_an_image(clean_cluster: Cluster) -> None:
    marker = Path(__file__).resolve()
    for node in clean_cluster.nodes:
        assert node.run(f"test -r {marker} && test -x /usr/bin/pdsh && test -x {VENV_PYTHON}").rc == 0


def test_nodes_resolve_every_node_themselves_and_localhost(clean_cluster: Cluster) -> None:
    expected = {"localhost": "127.0.0.1"} | {node.name: node.ip for node in clean_cluster.nodes}
    for node in clean_cluster.nodes:
        rc, out, _ = node.run("for h in localhost node1 node2 node3; do getent ahostsv4 $h | head -1; done")
        assert rc == 0
        resolved = {name: line.split()[0] for name, line in zip(expected, out.splitlines(), strict=True)}
        assert resolved == expected
        assert node.run("hostname -i").stdout.split() == [node.ip]


def test_node1_reaches_node2_sshd_by_name(clean_cluster: Cluster) -> None:
    rc, out, _ = clean_cluster.nodes[0].run("exec 3<>/dev/tcp/node2/22; head -c 7 <&3")
    assert (rc, out) == (0, "SSH-2.0")


def test_sshd_listens_on_the_node_address_and_on_loopback(clean_cluster: Cluster) -> None:
    rc, out, _ = clean_cluster.nodes[1].run("ss -Hltn 'sport = :22' | awk '{print $4}' | sort", user="root")
    assert rc == 0
    assert out.split() == [f"{clean_cluster.nodes[1].ip}:22", "127.0.0.1:22"]


def test_every_node_has_its_own_host_key(clean_cluster: Cluster) -> None:
    keys = [node.host_public_key().split()[1] for node in clean_cluster.nodes]
    assert len(set(keys)) == 3


# --- running commands ------------------------------------------------------------------------------

def test_commands_get_a_login_like_environment(clean_cluster: Cluster) -> None:
    node = clean_cluster.nodes[0]
    out = node.run('echo "$HOME|$USER|$LOGNAME|$PATH"').stdout.strip()
    assert out == "/home/ckuser|ckuser|ckuser|/usr/local/bin:/usr/bin:/bin:/usr/games"
    out = node.run('echo "$HOME|$USER"; id -u', user="root").stdout
    assert out.split() == ["/root|root", "0"]
    assert node.run("echo $EXTRA", env={"EXTRA": "given"}).stdout == "given\n"


def test_a_command_past_its_timeout_is_killed_and_reported(clean_cluster: Cluster) -> None:
    started = time.monotonic()
    with pytest.raises(NodeCommandTimeout, match="still running after 1") as raised:
        clean_cluster.nodes[0].run("echo begun; sleep 31", timeout=1)
    assert raised.value.stdout == "begun\n"
    assert time.monotonic() - started < 8
    assert "sleep 31" not in clean_cluster.nodes[0].run("ps -eo args").stdout


def test_put_file_writes_as_the_test_user_with_the_mode(clean_cluster: Cluster) -> None:
    node = clean_cluster.nodes[0]
    node.put_file("/home/ckuser/.ssh/config", "Host *\n", mode=0o600)
    assert node.run("stat -c '%U %a' ~/.ssh/config").stdout == "ckuser 600\n"


def test_nodes_have_their_own_process_tables(clean_cluster: Cluster) -> None:
    node1, node2, _ = clean_cluster.nodes
    assert node1.run("ps -eo pid=,comm= | head -1").stdout.split() == ["1", "bash"]
    node1.run("sleep 60 >/dev/null 2>&1 &")
    assert "sleep 60" not in node2.run("ps -eo args").stdout


def test_reset_homes_empties_homes_and_tmp(cluster: Cluster) -> None:
    node = cluster.nodes[2]
    node.put_file("/home/ckuser/.ssh/authorized_keys", "ssh-ed25519 AAAA test\n", mode=0o600)
    node.put_file("/tmp/scratch", "x")
    cluster.reset_homes()
    # A clone under /tmp is mounted into every node's /tmp at the same path: that stays.
    mounted = {Path(p).relative_to("/tmp").parts[0] for p in pyenv.paths_nodes_need() if p.startswith("/tmp/")}
    assert node.run("ls -A ~").stdout == ""
    assert set(node.run("ls /tmp").stdout.split()) == mounted


# --- SSH -------------------------------------------------------------------------------------------

def test_password_login_from_the_host_with_paramiko_and_fabric(clean_cluster: Cluster) -> None:
    node2 = clean_cluster.nodes[1]
    client = ssh_client(node2.ip, clean_cluster)
    try:
        assert remote_stdout(client, "hostname; whoami").split() == ["node2", "ckuser"]
    finally:
        client.close()
    with fabric.Connection(node2.ip, user=clean_cluster.user,
                           connect_kwargs={"password": clean_cluster.password, "look_for_keys": False,
                                           "allow_agent": False}) as connection:
        assert connection.run("hostname", hide=True, in_stream=False).stdout == "node2\n"


def test_password_login_from_node1_to_node2_and_to_its_own_loopback(clean_cluster: Cluster) -> None:
    script = f"""
import paramiko
for host in ("node2", "127.0.0.1"):
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect(host, username={clean_cluster.user!r}, password={clean_cluster.password!r},
                   timeout=5, look_for_keys=False, allow_agent=False)
    print(client.exec_command("hostname")[1].read().decode().strip())
    client.close()
"""
    rc, out, err = clean_cluster.nodes[0].run(f"{VENV_PYTHON} -c {shlex.quote(script)}", timeout=60)
    assert (rc, out.split()) == (0, ["node2", "node1"]), err


def test_key_login_and_pdsh_work_once_the_key_is_authorized(clean_cluster: Cluster) -> None:
    node1 = clean_cluster.nodes[0]
    node1.run("ssh-keygen -q -t ed25519 -N '' -f ~/.ssh/id_ed25519", check=True)
    public_key = node1.read_file("/home/ckuser/.ssh/id_ed25519.pub")
    for node in clean_cluster.nodes:
        node.put_file("/home/ckuser/.ssh/authorized_keys", public_key, mode=0o600)
        node.run("chmod 700 ~/.ssh", check=True)
    rc, out, err = node1.run("ssh -o BatchMode=yes -o StrictHostKeyChecking=accept-new node3 hostname")
    assert (rc, out) == (0, "node3\n"), err
    rc, out, err = node1.run("PDSH_SSH_ARGS_APPEND='-o BatchMode=yes -o StrictHostKeyChecking=no' "
                             "pdsh -R ssh -w localhost,node1,node2,node3 hostname | sort", timeout=60)
    assert rc == 0, err
    assert out.splitlines() == ["localhost: node1", "node1: node1", "node2: node2", "node3: node3"]


def test_a_bad_sshd_option_is_refused_with_sshds_message_and_sshd_keeps_running(
        clean_cluster: Cluster) -> None:
    node = clean_cluster.nodes[2]
    with pytest.raises(ClusterError, match="Bad configuration option: NoSuchOption"):
        node.set_sshd_options({"NoSuchOption": "yes"})
    assert node.sshd_listening()


def test_password_login_can_be_turned_off(clean_cluster: Cluster) -> None:
    node = clean_cluster.nodes[2]
    node.set_sshd_options({"PasswordAuthentication": "no"})
    with pytest.raises(paramiko.AuthenticationException):
        ssh_client(node.ip, clean_cluster).close()
    clean_cluster.heal()
    ssh_client(node.ip, clean_cluster).close()


def test_regenerated_host_keys_trip_known_hosts(clean_cluster: Cluster) -> None:
    node1, node2, _ = clean_cluster.nodes
    node1.put_file("/home/ckuser/.ssh/known_hosts", f"node2 {node2.host_public_key()}\n")
    before = node2.host_public_key()
    node2.regenerate_host_keys()
    assert node2.host_public_key() != before
    rc, _, err = node1.run("ssh -o BatchMode=yes -o StrictHostKeyChecking=yes node2 true")
    assert rc == 255
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in err


def test_restarted_sshd_answers_again_and_open_sessions_survive(clean_cluster: Cluster) -> None:
    node = clean_cluster.nodes[1]
    client = ssh_client(node.ip, clean_cluster)
    try:
        node.restart_sshd()
        assert remote_stdout(client, "hostname") == "node2\n"
        assert node.sshd_listening()
    finally:
        client.close()


# --- link shaping ----------------------------------------------------------------------------------

def download_seconds(node_run: Callable[..., object], cluster: Cluster, size: int) -> float:
    """Seconds for the node to read ``size`` bytes from a server on the bridge address."""
    server = socket.create_server((cluster.bridge_ip, 0))
    port = server.getsockname()[1]

    def serve() -> None:
        connection, _ = server.accept()
        with connection:
            connection.sendall(b"x" * size)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    started = time.monotonic()
    node_run(f"exec 3<>/dev/tcp/{cluster.bridge_ip}/{port}; cat <&3 | wc -c", timeout=30)
    elapsed = time.monotonic() - started
    thread.join(timeout=5)
    server.close()
    return elapsed


def test_shape_puts_a_tbf_rate_limit_on_the_link(clean_cluster: Cluster) -> None:
    node = clean_cluster.nodes[1]
    assert download_seconds(node.run, clean_cluster, 256_000) < 0.8
    node.shape("2mbit")
    assert "tbf" in node.qdisc() and "rate 2Mbit" in node.qdisc()
    assert download_seconds(node.run, clean_cluster, 256_000) > 0.8  # 2 Mbit at 2 Mbit/s: ~1 s
    node.unshape()
    assert "tbf" not in node.qdisc()


def test_shape_refuses_delay_and_loss_on_a_kernel_without_netem(clean_cluster: Cluster) -> None:
    with pytest.raises(ClusterError, match="netem"):
        clean_cluster.nodes[1].shape("10mbit", delay="50ms")


# --- planted faults --------------------------------------------------------------------------------

PRINT_TORCH_VERSION = "import torch; print(torch.__version__)"


def torch_version(node: Node, python: str) -> str:
    rc, out, err = node.run(f'{python} -c "{PRINT_TORCH_VERSION}"', timeout=120)
    assert rc == 0, err
    return out.strip()


def test_the_training_env_imports_torch_and_deepspeed_and_has_the_launcher(
        clean_cluster: Cluster, cluster_python: str) -> None:
    node = clean_cluster.nodes[2]
    rc, out, err = node.run(f'{cluster_python} -c "import sys, deepspeed; print(\'prefix=\' + sys.prefix)"; '
                            "ls /opt/ckenv/bin; head -1 /opt/ckenv/bin/deepspeed", timeout=120)
    assert rc == 0, err
    words = out.split()
    assert "prefix=/opt/ckenv" in words  # deepspeed may log to stdout on import
    assert {"deepspeed", "ds_report", "ninja", "python"} <= set(words)
    assert words[-1] == "#!/opt/ckenv/bin/python"


@pytest.mark.slow
def test_plant_torch_version_changes_torch_on_that_node_only(clean_cluster: Cluster,
                                                             cluster_python: str) -> None:
    node1, node2, _ = clean_cluster.nodes
    real = torch_version(node1, cluster_python)
    node2.plant_torch_version("2.0.0")
    try:
        assert torch_version(node2, cluster_python) == "2.0.0"
        assert torch_version(node1, cluster_python) == real
        shared = subprocess.run([VENV_PYTHON, "-c", PRINT_TORCH_VERSION], capture_output=True, text=True)
        assert shared.stdout.strip() == real  # the hard-linked shared venv is untouched
    finally:
        pyenv.remove_planted_torch(node2)
    assert torch_version(node2, cluster_python) == real


def test_remove_python_env_removes_the_interpreter_on_that_node_only(start_cluster: StartCluster) -> None:
    cluster = start_cluster(2)
    python = cluster.install_python_env()
    node1, node2 = cluster.nodes
    node2.remove_python_env()
    assert node2.run(f"{python} -V").rc == 127
    assert node1.run(f"{python} -V").stdout.startswith("Python 3")


def test_hide_binary_makes_pdsh_missing_on_that_node_only(clean_cluster: Cluster) -> None:
    node1, node2, _ = clean_cluster.nodes
    node2.hide_binary("/usr/bin/pdsh")
    assert node2.run("command -v pdsh").rc == 1
    assert node2.run("pdsh -V").rc == 127
    assert node1.run("command -v pdsh").stdout == "/usr/bin/pdsh\n"
    assert Path("/usr/bin/pdsh").exists()
    node2.unhide_binary("/usr/bin/pdsh")
    assert node2.run("command -v pdsh").stdout == "/usr/bin/pdsh\n"


# --- killing and freezing nodes --------------------------------------------------------------------

def test_a_killed_node_fails_connections_fast_and_boots_back_with_its_disk(
        start_cluster: StartCluster) -> None:
    cluster = start_cluster(2)
    node1, node2 = cluster.nodes
    node2.put_file("/home/ckuser/kept", "disk survives\n")
    pids = node2.pids()
    node2.kill()
    assert not node2.is_up and not live(pids)
    started = time.monotonic()
    with pytest.raises(OSError):
        socket.create_connection((node2.ip, 22), timeout=3)
    rc, _, err = node1.run("ssh -o ConnectTimeout=3 -o BatchMode=yes node2 true", timeout=30)
    assert rc == 255 and "node2" in err
    assert time.monotonic() - started < 12
    with pytest.raises(ClusterError, match="down"):
        node2.run("true")
    node2.boot()
    assert node2.sshd_listening()
    assert node2.read_file("/home/ckuser/kept") == "disk survives\n"


def test_a_frozen_node_hangs_connections_until_timeout_and_thaw_recovers(
        start_cluster: StartCluster) -> None:
    cluster = start_cluster(2)
    node2 = cluster.nodes[1]
    session = ssh_client(node2.ip, cluster)
    try:
        node2.freeze()
        started = time.monotonic()
        with pytest.raises((paramiko.SSHException, OSError)):
            ssh_client(node2.ip, cluster, timeout=2)
        assert 1.5 < time.monotonic() - started < 10
        with pytest.raises((paramiko.SSHException, TimeoutError)):
            remote_stdout(session, "hostname", timeout=2)
        started = time.monotonic()
        rc, _, err = cluster.nodes[0].run("ssh -o ConnectTimeout=2 -o BatchMode=yes node2 true", timeout=30)
        assert rc == 255 and "banner exchange" in err  # OpenSSH's ConnectTimeout covers the banner
        assert 1.5 < time.monotonic() - started < 10
        node2.thaw()
        after = ssh_client(node2.ip, cluster)
        assert remote_stdout(after, "hostname") == "node2\n"
        after.close()
    finally:
        session.close()


# --- lifecycle -------------------------------------------------------------------------------------

def test_eight_nodes_start_and_see_each_other(start_cluster: StartCluster,
                                              record_property: Callable[..., None]) -> None:
    cluster = start_cluster(8)
    record_property("startup_seconds_8_nodes", round(cluster.startup_seconds, 2))
    assert cluster.startup_seconds < 20
    rc, out, _ = cluster.nodes[7].run("for i in 1 2 3 4 5 6 7 8; do "
                                      "(exec 3<>/dev/tcp/node$i/22; head -c 7 <&3; echo); done")
    assert (rc, out.split()) == (0, ["SSH-2.0"] * 8)
    assert cluster.hostfile(slots=2).read_text().splitlines()[7] == "node8 slots=2"


def skip_unless_host_can_run_clusters() -> None:
    try:
        system.check_host()
    except ClusterUnavailable as exc:
        pytest.skip(str(exc))


def test_cleanup_leaves_nothing_behind_even_when_the_body_raises() -> None:
    skip_unless_host_can_run_clusters()
    pids: list[int] = []
    with pytest.raises(RuntimeError, match="test body failed"), Cluster.start(2, "gone") as cluster:
        cluster.nodes[0].freeze()
        pids = [pid for node in cluster.nodes for pid in node.pids()]
        raise RuntimeError("test body failed")
    assert pids
    assert not live(pids)
    # Held, the index is no other test process's to start a cluster on while we look.
    if system.CLAIMS.try_claim(cluster.index):
        try:
            assert host_leftovers(cluster.index) == []
        finally:
            system.CLAIMS.release(cluster.index)
    else:  # another process took the index at once: what it starts there is its own
        assert not cluster.state_dir.exists()


@pytest.fixture
def crashed_run_leftovers() -> Iterator[subprocess.Popen[bytes]]:
    skip_unless_host_can_run_clusters()
    ip = system.tool("ip")
    subprocess.run([ip, "netns", "add", "ckt250n1"], check=True)
    sleeper = subprocess.Popen([ip, "netns", "exec", "ckt250n1", "sleep", "300"])
    subprocess.run([ip, "link", "add", "cktbr250", "type", "bridge"], check=True)
    stale = system.STATE_ROOT / f"{system.STATE_DIR_PREFIX}999999-250"
    (stale / "node1").mkdir(parents=True)
    yield sleeper
    sleeper.kill()
    sleeper.wait()
    subprocess.run([ip, "netns", "del", "ckt250n1"], capture_output=True)
    subprocess.run([ip, "link", "del", "cktbr250"], capture_output=True)
    system.remove_state_dir(stale)


def test_leftovers_of_a_crashed_run_are_removed_when_a_cluster_starts(
        crashed_run_leftovers: subprocess.Popen[bytes], start_cluster: StartCluster) -> None:
    start_cluster(1)
    assert crashed_run_leftovers.wait(timeout=5) != 0  # killed
    leftovers = host_leftovers()
    assert "ckt250n1" not in leftovers and "cktbr250" not in leftovers
    assert not any("999999-250" in name for name in leftovers)


def test_without_root_the_cluster_is_unavailable_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(system, "_host_checked", None)
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    with pytest.raises(ClusterUnavailable, match="namespace cluster needs root: running as uid 1000"):
        Cluster.launch(1)



ALL_REDUCE_SCRIPT = """
import socket, torch, deepspeed, torch.distributed as dist
deepspeed.init_distributed(dist_backend="gloo")
total = torch.ones(1) * (dist.get_rank() + 1)
dist.all_reduce(total)
print(f"rank {dist.get_rank()} of {dist.get_world_size()} on {socket.gethostname()}: sum {total.item()}")
dist.barrier()
dist.destroy_process_group()  # exiting with gloo threads alive can abort ("terminate called ...")
"""


@pytest.mark.slow
def test_deepspeeds_pdsh_launcher_runs_an_all_reduce_across_the_nodes(clean_cluster: Cluster) -> None:
    python = clean_cluster.install_python_env(prebuilt_ops=True)
    node1 = clean_cluster.nodes[0]
    node1.run("mkdir -p ~/.ssh && ssh-keygen -q -t ed25519 -N '' -f ~/.ssh/id_ed25519", check=True)
    public_key = node1.read_file("/home/ckuser/.ssh/id_ed25519.pub")
    for node in clean_cluster.nodes:
        node.put_file("/home/ckuser/.ssh/authorized_keys", public_key, mode=0o600)
        node.put_file("/home/ckuser/all_reduce.py", ALL_REDUCE_SCRIPT)
    node1.put_file("/home/ckuser/.ssh/config", "Host *\n  StrictHostKeyChecking accept-new\n", mode=0o600)
    node1.put_file("/home/ckuser/hostfile", clean_cluster.hostfile_text())
    rc, out, err = node1.run(f"PATH={python.rsplit('/', 1)[0]}:$PATH deepspeed --hostfile ~/hostfile "
                             "--launcher pdsh --master_addr node1 all_reduce.py", timeout=240)
    assert rc == 0, err[-3000:]
    results = sorted(line.split(": ", 1)[1] for line in out.splitlines() if " sum " in line)
    assert results == [f"rank {i} of 3 on node{i + 1}: sum 6.0" for i in range(3)]
    assert "built successfully" in out and "Building extension" not in out + err
