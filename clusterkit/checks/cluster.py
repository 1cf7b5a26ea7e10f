"""Cluster-wide checks: what only shows when nodes are compared, or probed from each other."""

from __future__ import annotations

import posixpath
from collections import defaultdict
from collections.abc import Callable, Iterator

from clusterkit.checks.registry import ClusterView, cluster_check, deepspeed_exports
from clusterkit.core.dsenv import effective_values, parse_deepspeed_env
from clusterkit.core.findings import NotApplicable, Problem, Severity
from clusterkit.core.nccl import select_interfaces
from clusterkit.node.facts import NodeFacts, Unavailable


def _over_ssh(view: ClusterView) -> None:
    """Skip where the launch needs no SSH: one host, this machine, or ranks started by srun."""
    if view.probes is not None and view.probes.local_only:
        raise NotApplicable("a launch on this machine alone needs no SSH between nodes")
    if view.probes is not None and not isinstance(view.probes.slurm, Unavailable):
        raise NotApplicable("srun starts the ranks under Slurm: no SSH between nodes")


@cluster_check("node-unreachable", Severity.ERROR, tags=("ssh", "cluster"),
               why="a node the launcher cannot reach makes the whole job fail at start",
               fix="check the node is up and sshd runs there; then `clusterkit bootstrap HOSTFILE`")
def node_unreachable(view: ClusterView) -> Iterator[Problem]:
    """Every node in the hostfile answered and returned its facts."""
    fixes = view.probes.unreachable_fixes if view.probes else {}
    for host in view.hosts:
        facts = view.nodes.get(host.name, Unavailable("not collected"))
        if isinstance(facts, Unavailable):
            yield Problem(facts.reason, where=host.name, fix=fixes.get(host.name), host=host.name)


def _spread(view: ClusterView, read: Callable[[NodeFacts], object]) -> dict[str, list[str]]:
    """value -> hosts holding it, over reachable nodes where the value could be read."""
    groups: dict[str, list[str]] = defaultdict(list)
    for name, facts in view.reachable().items():
        value = read(facts)
        if not isinstance(value, Unavailable):
            groups[str(value)].append(name)
    return groups


def _differences(view: ClusterView, what: str, read: Callable[[NodeFacts], object]) -> Iterator[Problem]:
    """A problem on each node outside the most common value of ``read``."""
    groups = _spread(view, read)
    if len(groups) < 2:
        return
    ranked = sorted(groups.items(), key=lambda kv: -len(kv[1]))
    majority_value = ranked[0][0]
    summary = "; ".join(f"{value} on {', '.join(hosts)}" for value, hosts in ranked)
    for _, hosts in ranked[1:]:
        for host in hosts:
            yield Problem(f"{what} differs across nodes: {summary}", where=host,
                          fix=f"make {host} match the others ({what} {majority_value})", host=host)


def _python_env(field: str) -> Callable[[NodeFacts], object]:
    def read(facts: NodeFacts) -> object:
        env = facts.python_env
        return env if isinstance(env, Unavailable) else getattr(env, field)
    return read


def _driver(facts: NodeFacts) -> object:
    return facts.nvidia if isinstance(facts.nvidia, Unavailable) else facts.nvidia.driver_version


def _gpu_models(facts: NodeFacts) -> object:
    if isinstance(facts.nvidia, Unavailable):
        return facts.nvidia
    gpus = facts.nvidia.gpus
    return gpus if isinstance(gpus, Unavailable) else ", ".join(sorted({g.name for g in gpus}))


_SOFTWARE = {"python": "version", "torch": "torch_version", "torch CUDA": "torch_cuda",
             "NCCL": "nccl_version", "DeepSpeed": "deepspeed_version"}


def _machine_identity(facts: NodeFacts) -> object:
    """Hostname and every non-loopback address: two hostfile entries with the same are one machine."""
    network = facts.network
    if isinstance(network, Unavailable) or isinstance(network.nics, Unavailable):
        return Unavailable("interfaces unknown")
    addresses = sorted(a.split("/")[0] for nic in network.nics if nic.kind != "loopback" for a in nic.ipv4)
    if not addresses:
        return Unavailable("no addresses")
    return f"{facts.host.hostname} ({', '.join(addresses)})"


@cluster_check("hostfile-duplicate-machine", Severity.ERROR, tags=("hostfile", "cluster"),
               why="two hostfile entries for one machine (its name and its address, say) make DeepSpeed start two "
                   "sets of ranks on the same GPUs: `Duplicate GPU detected`, or a hang at rendezvous",
               fix="keep one entry per machine in the hostfile")
def hostfile_duplicate_machine(view: ClusterView) -> Iterator[Problem]:
    """Each hostfile entry is a different machine."""
    for identity, hosts in _spread(view, _machine_identity).items():
        if len(hosts) > 1:
            lines = {h.name: h.entry.line for h in view.hosts}
            yield Problem(f"{' and '.join(hosts)} are the same machine, {identity}",
                          where=", ".join(f"{view.hostfile}:{lines[h]}" for h in hosts if h in lines),
                          fix=f"keep one of {', '.join(hosts)} in the hostfile", host=hosts[-1])


@cluster_check("software-versions-differ", Severity.ERROR, tags=("python", "torch", "deepspeed", "cluster"),
               why="ranks built from different torch/DeepSpeed/NCCL versions fail with config validation "
                   "errors, op mismatches or hung collectives",
               fix="install one env everywhere: conda-pack it on one node and unpack at the same path")
def software_versions_differ(view: ClusterView) -> Iterator[Problem]:
    """Python, torch (and its CUDA), NCCL and DeepSpeed are the same version on every node."""
    for what, field in _SOFTWARE.items():
        yield from _differences(view, what, _python_env(field))


@cluster_check("env-hash-differs", Severity.WARNING, tags=("python", "cluster"),
               why="the same versions of the big packages can hide a different dependency (e.g. a "
                   "transformers or triton version) that changes behaviour on one node",
               fix="broadcast one packed env to every node instead of installing per node")
def env_hash_differs(view: ClusterView) -> Iterator[Problem]:
    """The training env's installed packages (name==version hash) are identical on every node."""
    yield from _differences(view, "installed-package hash", _python_env("env_hash"))


@cluster_check("driver-versions-differ", Severity.WARNING, tags=("gpu", "driver", "cluster"),
               why="mixed drivers support different CUDA versions and NCCL features, and mixed GPU models "
                   "run every step at the pace of the slowest",
               fix="install the same NVIDIA driver (and GPU model) on every node")
def driver_versions_differ(view: ClusterView) -> Iterator[Problem]:
    """The NVIDIA driver and the GPU model are the same on every node."""
    yield from _differences(view, "NVIDIA driver", _driver)
    yield from _differences(view, "GPU model", _gpu_models)


@cluster_check("code-path-missing", Severity.ERROR, tags=("launcher", "cluster"),
               why="pdsh runs `cd <launch directory>; <python> ... <script>` on every node: "
                   "`bash: line 0: cd: /x: No such file or directory`, or the node's ranks stop with "
                   "`can't open file '/x/train.py'` (exit 2)",
               fix="sync the code to the same path on every node (`clusterkit bootstrap --sync DIR`) or "
                   "launch from a shared filesystem")
def code_path_missing(view: ClusterView) -> Iterator[Problem]:
    """The directory jobs are launched from, and the training script in it, exist on every node."""
    for name, facts in view.reachable().items():
        launcher = facts.launcher
        if isinstance(launcher, Unavailable):
            continue
        if launcher.cwd_exists is False:
            yield Problem(f"launch directory {launcher.cwd} does not exist on {name}", where=name, host=name)
        elif launcher.script_exists is False:
            script = posixpath.join(launcher.cwd, str(launcher.script))
            yield Problem(f"training script {script} does not exist on {name}: DeepSpeed's ranks there stop with "
                          "`can't open file`", where=f"{name}:{script}", host=name,
                          fix=f"copy {script} to {name}, or sync the project directory to every node "
                              "(`clusterkit bootstrap HOSTFILE --sync DIR`) or launch from a filesystem they share")


@cluster_check("clock-skew", Severity.WARNING, tags=("time", "cluster"),
               why="skewed clocks scramble logs and timeouts, and break Kerberos/NFS and TLS",
               fix="run chrony or systemd-timesyncd on every node")
def clock_skew(view: ClusterView) -> Iterator[Problem]:
    """Node clocks agree with the head's within a second."""
    if view.probes is None:
        raise NotApplicable("no cluster probes")
    limit = view.thresholds.clock_skew_warn_s
    for host, offset in view.probes.clock_offset_s.items():
        if not isinstance(offset, Unavailable) and abs(offset) > limit:
            yield Problem(f"clock on {host} is {offset:+.2f}s off the head's", where=host, host=host)


@cluster_check("ssh-mesh-broken", Severity.ERROR, tags=("ssh", "cluster"),
               why="DeepSpeed's launcher and pdsh need passwordless SSH with known host keys between "
                   "nodes, including each node to itself",
               fix="run `clusterkit bootstrap HOSTFILE` (all-to-all keys and known_hosts)")
def ssh_mesh_broken(view: ClusterView) -> Iterator[Problem]:
    """Live logins by hostfile name work without a password or a prompt (ring or full mesh)."""
    _over_ssh(view)
    if view.probes is None or not view.probes.ssh_mesh:
        raise NotApplicable("no live logins were tried (--mesh static); pairs are judged by ssh-trust-incomplete")
    for source, logins in view.probes.ssh_mesh.items():
        if isinstance(logins, Unavailable):
            yield Problem(f"could not test SSH from {source}: {logins.reason}", where=source, host=source)
            continue
        for login in logins:
            if not login.ok:
                yield Problem(f"ssh {source} -> {login.host} fails: {login.error}", where=f"{source} -> {login.host}",
                              host=source)


def _known_for(known: dict[str, list[str]], name: str) -> list[str] | None:
    """known_hosts keys for ``name``, also when it was looked up as ``[name]:port``."""
    if name in known:
        return known[name]
    return next((keys for key, keys in known.items() if key.startswith(f"[{name}]:")), None)


@cluster_check("ssh-trust-incomplete", Severity.ERROR, tags=("ssh", "cluster"),
               why="a login that needs a password or asks about an unknown host key makes pdsh (BatchMode) "
                   "fail on that node: `Permission denied (publickey)` or `Host key verification failed`",
               fix="run `clusterkit bootstrap HOSTFILE` (every key in every authorized_keys, every host key in "
                   "every known_hosts)")
def ssh_trust_incomplete(view: ClusterView) -> Iterator[Problem]:
    """For every pair of nodes, one's key is authorized on the other and the other's host key is known."""
    _over_ssh(view)
    trust = {}
    for name, facts in view.reachable().items():
        if not isinstance(facts.launcher, Unavailable) and not isinstance(facts.launcher.ssh_trust, Unavailable):
            trust[name] = facts.launcher.ssh_trust
    if len(trust) < 1:
        raise NotApplicable("no node reported its SSH keys")
    for source, mine in trust.items():
        refused, unknown, changed = [], [], []
        for target, theirs in trust.items():
            if not isinstance(mine.user_keys, Unavailable) and not isinstance(theirs.authorized_keys, Unavailable) \
                    and not set(mine.user_keys) & set(theirs.authorized_keys):
                refused.append(target)
            if isinstance(mine.known_hosts, Unavailable) or isinstance(theirs.host_keys, Unavailable):
                continue
            known = _known_for(mine.known_hosts, target)
            if known is not None and not known:
                unknown.append(target)
            elif known and not set(known) & set(theirs.host_keys):
                changed.append(target)
        if isinstance(mine.user_keys, list) and not mine.user_keys:
            yield Problem(f"{source} has no SSH key (~/.ssh/id_*.pub), so it cannot log into any node",
                          where=source, host=source)
        elif refused:
            yield Problem(f"{source}'s keys are not in ~/.ssh/authorized_keys on {', '.join(refused)}",
                          where=f"{source} -> {', '.join(refused)}", host=source)
        if unknown:
            yield Problem(f"~/.ssh/known_hosts on {source} has no host key for {', '.join(unknown)}",
                          where=f"{source} -> {', '.join(unknown)}", host=source)
        if changed:
            yield Problem(f"~/.ssh/known_hosts on {source} holds a different host key for {', '.join(changed)} "
                          "(`REMOTE HOST IDENTIFICATION HAS CHANGED`)", where=f"{source} -> {', '.join(changed)}",
                          fix=f"on {source}, after checking the new keys: "
                              + "; ".join(f"ssh-keygen -R {t}" for t in changed) + "; then clusterkit bootstrap",
                          host=source)


@cluster_check("master-unreachable", Severity.ERROR, tags=("network", "rendezvous", "cluster"),
               why="every rank connects to MASTER_ADDR:MASTER_PORT first; one node that cannot ends in "
                   "a rendezvous timeout after minutes",
               fix="choose an address every node routes to (`clusterkit launch --master-addr A`, which "
                   "passes deepspeed --master_addr A), or open the port in the firewall")
def master_unreachable(view: ClusterView) -> Iterator[Problem]:
    """The rendezvous address DeepSpeed picks is reachable on the master port from every node."""
    if view.probes is None:
        raise NotApplicable("no cluster probes")
    master = view.probes.master
    if isinstance(master, Unavailable):
        raise NotApplicable(f"master not probed: {master.reason}")
    if master.port_free is False:
        yield Problem(f"port {master.port} is already in use on {master.host}", where=master.host,
                      fix=f"on {master.host}: ss -ltnp 'sport = :{master.port}' to see who holds it; "
                          "stop it, or choose another port (`clusterkit launch --master-port P`, which passes "
                          "deepspeed --master_port P; without it, launch picks a free port itself)", host=master.host)
        return
    for host, connection in master.reachable_from.items():
        if isinstance(connection, Unavailable):
            continue  # not tested: the node's facts (or its probe) never came back, said elsewhere
        if not connection.ok:
            yield Problem(f"{host} cannot reach {master.address}:{master.port} on {master.host}: "
                          f"{connection.error}", where=f"{host} -> {master.address}:{master.port}", host=host)


@cluster_check("master-address-suspicious", Severity.WARNING, tags=("network", "rendezvous", "cluster"),
               why="without --master_addr DeepSpeed takes the first word of `hostname -I` on the first "
                   "host, which can be a docker or bridge address other nodes cannot route to",
               fix="launch with `clusterkit launch` (it passes deepspeed --master_addr, tested from every "
                   "node), or pass --master_addr to deepspeed yourself")
def master_address_suspicious(view: ClusterView) -> Iterator[Problem]:
    """The address DeepSpeed would pick as MASTER_ADDR belongs to a real, routable interface."""
    if view.probes is None or isinstance(view.probes.master, Unavailable):
        raise NotApplicable("master not probed")
    master = view.probes.master
    first = view.reachable().get(master.host)
    if first is None or isinstance(first.network, Unavailable) or isinstance(first.network.nics, Unavailable):
        raise NotApplicable("first host's interfaces unknown")
    for nic in first.network.nics:
        if any(addr.split("/")[0] == master.address for addr in nic.ipv4):
            if nic.kind in ("bridge", "virtual") or nic.name.startswith(("docker", "virbr", "br-")):
                yield Problem(f"DeepSpeed would use {master.address} ({nic.name}, a {nic.kind} interface) "
                              f"as MASTER_ADDR", where=master.host, host=master.host)
            return


def _launching_machine(view: ClusterView) -> NodeFacts:
    """The launching machine as the launcher sees it: DeepSpeed exports its environment and its
    .deepspeed_env to every rank, whether it is a hostfile node or a login node outside the hostfile."""
    if view.probes is None:
        raise NotApplicable("no survey of the launching machine")
    if view.probes.local_only:
        raise NotApplicable("a launch on this machine alone exports nothing to other nodes")
    here = view.probes.launch_facts
    if isinstance(here, Unavailable):
        raise NotApplicable(f"the launching machine's facts are unavailable: {here.reason}")
    return here


@cluster_check("nccl-socket-ifname-unmatched", Severity.ERROR, tags=("nccl", "network", "cluster"),
               why="the launch node exports NCCL_SOCKET_IFNAME to every rank; a node where it matches no "
                   "interface with an address fails with `NCCL error: unhandled system error`",
               fix="set NCCL_SOCKET_IFNAME in .deepspeed_env to an interface every node has "
                   "(`clusterkit bootstrap` picks one)")
def nccl_socket_ifname_unmatched(view: ClusterView) -> Iterator[Problem]:
    """The NCCL_SOCKET_IFNAME the launch node exports selects an addressed interface on every node."""
    spec = deepspeed_exports(_launching_machine(view)).get("NCCL_SOCKET_IFNAME")
    if not spec:
        raise NotApplicable("NCCL_SOCKET_IFNAME is not set on the launching machine")
    for name, facts in view.reachable().items():
        if isinstance(facts.network, Unavailable) or isinstance(facts.network.nics, Unavailable):
            continue
        usable = [n.name for n in facts.network.nics if n.ipv4 and n.operstate in ("up", "unknown")]
        if not select_interfaces(spec, usable):
            yield Problem(f"NCCL_SOCKET_IFNAME={spec} (exported from the launch node) matches no "
                          f"addressed interface on {name}; it has {', '.join(usable) or 'none'}",
                          where=name, host=name)


def _home_dsenv(facts: NodeFacts) -> object:
    """What ~/.deepspeed_env exports, as one comparable line (or why it is unknown)."""
    if isinstance(facts.launcher, Unavailable) or not facts.launcher.deepspeed_env_files:
        return Unavailable("unknown")
    file = facts.launcher.deepspeed_env_files[0]
    if not file.exists:
        return "(no file)"
    if isinstance(file.lines, Unavailable):
        return file.lines
    entries, _ = parse_deepspeed_env(file.lines, file.path)
    return " ".join(f"{k}={v}" for k, v in sorted(effective_values(entries).items())) or "(empty)"


@cluster_check("dsenv-inconsistent", Severity.WARNING, tags=("deepspeed", "env", "cluster"),
               why="DeepSpeed exports only the launching machine's .deepspeed_env to every rank: a launching "
                   "machine without the nodes' settings (a login node outside the hostfile) sends no "
                   "NCCL_SOCKET_IFNAME or PATH at all, and a launch from another node runs with other settings",
               fix="write the same ~/.deepspeed_env on every node and on the launching machine "
                   "(`clusterkit bootstrap` does)")
def dsenv_inconsistent(view: ClusterView) -> Iterator[Problem]:
    """The launching machine's ~/.deepspeed_env says what every node's says."""
    groups = _spread(view, _home_dsenv)
    head: str | None = None
    if view.probes is not None and not view.probes.local_only and not view.probes.head_in_hostfile:
        head = view.probes.head
        value = _home_dsenv(_launching_machine(view))
        if isinstance(value, str):
            if len(groups) == 1 and value not in groups:  # every node agrees; the launching machine does not
                nodes_value, hosts = next(iter(groups.items()))
                yield Problem(f"~/.deepspeed_env on the launching machine {head} exports {value[:200]}, while "
                              f"every node's exports {nodes_value[:200]}: DeepSpeed sends only the launching "
                              "machine's", where=f"{head}:~/.deepspeed_env", host=head,
                              fix=f"rerun `clusterkit bootstrap` from {head} (it writes the file there too), or "
                                  f"copy it: scp {hosts[0]}:.deepspeed_env ~/")
                return
            groups.setdefault(value, []).append(head)
    head = head or (view.probes.head if view.probes else None)
    if len(groups) > 1:
        ranked = sorted(groups.items(), key=lambda kv: (head not in kv[1], -len(kv[1])))
        reference = f"the launching machine {head}" if head in ranked[0][1] else ", ".join(ranked[0][1])
        for value, hosts in ranked[1:]:
            for host in hosts:
                yield Problem(f"~/.deepspeed_env on {host} differs from the one on {reference}: {value[:200]}",
                              where=host, host=host)


@cluster_check("ib-inconsistent", Severity.WARNING, tags=("infiniband", "nccl", "cluster"),
               why="when some nodes have active InfiniBand and others not, NCCL falls back to TCP "
                   "sockets everywhere or hangs during init",
               fix="bring the IB ports up everywhere, or set NCCL_IB_DISABLE=1 in .deepspeed_env")
def ib_inconsistent(view: ClusterView) -> Iterator[Problem]:
    """Either every node has an active InfiniBand/RoCE port, or none does."""
    def active_ports(facts: NodeFacts) -> object:
        if isinstance(facts.network, Unavailable) or isinstance(facts.network.ib_ports, Unavailable):
            return Unavailable("unknown")
        return any(p.active for p in facts.network.ib_ports)

    groups = _spread(view, active_ports)
    if set(groups) == {"True", "False"}:
        for host in groups["False"]:
            yield Problem(f"{host} has no active RDMA port while {', '.join(groups['True'])} do",
                          where=host, host=host)
