"""Interconnect checks: InfiniBand/RoCE ports, NCCL's interface settings, NVLink and GPU peer-to-peer."""

from __future__ import annotations

from collections.abc import Iterator

from clusterkit.checks.gpu import gpu_where, node_gpus
from clusterkit.checks.registry import NodeContext, node_check
from clusterkit.core.dsenv import parse_deepspeed_env
from clusterkit.core.findings import NotApplicable, Problem, Severity, require
from clusterkit.core.nccl import DEFAULT_EXCLUDED_PREFIXES, select_interfaces
from clusterkit.node.facts import IbPortFacts, NicFacts, NodeFacts, known

#: NCCL's P2P matrix statuses (``nvidia-smi topo -p2p``) other than OK.
P2P_STATUS = {"CNS": "chipset not supported", "GNS": "GPU not supported", "TNS": "topology not supported",
              "NS": "not supported", "U": "unknown"}


def port_name(port: IbPortFacts) -> str:
    return f"{port.device} port {port.port}"


def _ib_disabled(facts: NodeFacts) -> bool:
    return facts.env_vars.get("NCCL_IB_DISABLE", "0").strip() == "1"


def _ports(facts: NodeFacts) -> list[IbPortFacts]:
    return require(require(facts.network, "network facts").ib_ports, "RDMA ports")


# ------------------------------------------------------------------------------------------- RDMA


@node_check("ib-port-down", Severity.WARNING, tags=("network", "rdma"),
            why="A port that is not ACTIVE/LinkUp carries no traffic; NCCL skips it (less bandwidth) or, "
                "when NCCL_IB_HCA names it, fails.",
            fix="check the cable and switch port; ibstat shows state and physical state")
def check_ib_port_down(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """Every RDMA port is ACTIVE with its physical link up."""
    ports = _ports(facts)
    if not ports:
        raise NotApplicable("no RDMA ports on this node")
    for port in ports:
        if not port.active:
            yield Problem(f"{port_name(port)} is {port.state} (physical: {port.phys_state})",
                          where=port_name(port),
                          fix=f"ibstat {port.device} {port.port}   # check cable, transceiver, switch port")


@node_check("ib-no-active-port", Severity.ERROR, tags=("network", "rdma", "nccl"),
            why="The node has RDMA hardware but no usable port: NCCL prints 'NET/IB : No device found' "
                "and moves everything over TCP sockets, many times slower.",
            fix="bring a port up (cable, switch, subnet manager: ibstat), or set NCCL_IB_DISABLE=1 in "
                "~/.deepspeed_env to make the fallback explicit")
def check_ib_none_active(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """At least one RDMA port is usable on a node that has RDMA hardware."""
    ports = _ports(facts)
    if not ports:
        raise NotApplicable("no RDMA ports on this node")
    if _ib_disabled(facts):
        raise NotApplicable("NCCL_IB_DISABLE=1: NCCL does not use RDMA here")
    if not any(port.active for port in ports):
        yield Problem(f"none of the {len(ports)} RDMA port(s) is active "
                      f"({', '.join(f'{port_name(p)} {p.state}' for p in ports)})", where="RDMA ports")


@node_check("ib-rate-mismatch", Severity.WARNING, tags=("network", "rdma"),
            why="A port that trained at a lower rate than its siblings (200 instead of 400 Gb/s) slows "
                "every collective that crosses it: a bad cable or transceiver.",
            fix="check the cable and transceiver; ibstat shows each port's rate")
def check_ib_rate(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """Active RDMA ports of the same kind run at the same rate."""
    active = [port for port in _ports(facts) if port.active and known(port.rate_gbps)]
    if len(active) < 2:
        raise NotApplicable("fewer than two active RDMA ports with a known rate")
    for layer in sorted({port.link_layer for port in active}):
        same = [port for port in active if port.link_layer == layer]
        best = max(float(port.rate_gbps) for port in same)  # type: ignore[arg-type]
        for port in same:
            if float(port.rate_gbps) < best:  # type: ignore[arg-type]
                yield Problem(f"{port_name(port)} runs at {port.rate_gbps:g} Gb/s, other {layer} ports at "
                              f"{best:g} Gb/s", where=port_name(port))


def _hca_matches(spec: str, port: IbPortFacts) -> bool:
    """One NCCL_IB_HCA item (``mlx5_0``, ``mlx5_0:1``) against a port; prefix match unless exact."""
    exact = spec.startswith("=")
    device, _, port_text = spec.lstrip("=").partition(":")
    name_ok = port.device == device if exact else port.device.startswith(device)
    return name_ok and (not port_text or port_text == str(port.port))


def parse_nccl_list(value: str) -> tuple[bool, bool, list[str]]:
    """NCCL's list syntax (``^`` excludes, ``=`` wants exact names) -> (exclude, exact, items)."""
    text = value.strip()
    exclude = text.startswith("^")
    text = text.lstrip("^")
    exact = text.startswith("=")
    text = text.lstrip("=")
    return exclude, exact, [item.strip() for item in text.split(",") if item.strip()]


@node_check("ib-absent-with-nccl-ib", Severity.ERROR, tags=("network", "rdma", "nccl"),
            why="NCCL_IB_HCA asks for RDMA devices this node does not have (or only has down): NCCL "
                "falls back to sockets or fails to initialise on this node.",
            fix="fix NCCL_IB_HCA to name this node's devices (ibv_devinfo lists them), or unset it")
def check_nccl_ib_hca(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """NCCL_IB_HCA names RDMA ports that exist and are active here."""
    value = facts.env_vars.get("NCCL_IB_HCA")
    if not value:
        raise NotApplicable("NCCL_IB_HCA is not set")
    if _ib_disabled(facts):
        raise NotApplicable("NCCL_IB_DISABLE=1")
    ports = _ports(facts)
    exclude, exact, items = parse_nccl_list(value)
    specs = [("=" if exact else "") + item for item in items]
    if not ports:
        yield Problem(f"NCCL_IB_HCA={value} but this node has no RDMA ports", where="NCCL_IB_HCA")
        return
    chosen = [port for port in ports if any(_hca_matches(spec, port) for spec in specs) != exclude]
    names = ", ".join(sorted({port.device for port in ports}))
    if not chosen:
        yield Problem(f"NCCL_IB_HCA={value} selects none of this node's RDMA devices ({names})",
                      where="NCCL_IB_HCA")
    elif not any(port.active for port in chosen):
        yield Problem(f"NCCL_IB_HCA={value} selects only ports that are down "
                      f"({', '.join(port_name(p) for p in chosen)})", where="NCCL_IB_HCA")


@node_check("nccl-ib-disabled", Severity.WARNING, tags=("network", "rdma", "nccl"),
            why="NCCL_IB_DISABLE=1 makes NCCL use TCP sockets although RDMA ports are up: inter-node "
                "collectives run many times slower.",
            fix="remove NCCL_IB_DISABLE from the environment and ~/.deepspeed_env")
def check_nccl_ib_disabled(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """NCCL is allowed to use the node's active RDMA ports."""
    if not _ib_disabled(facts):
        raise NotApplicable("NCCL_IB_DISABLE is not set to 1")
    active = [port_name(port) for port in _ports(facts) if port.active]
    if active:
        yield Problem(f"NCCL_IB_DISABLE=1 while {len(active)} RDMA port(s) are active ({', '.join(active)})",
                      where="NCCL_IB_DISABLE")


# ------------------------------------------------------------------------------------ socket iface


def _iface_up(nic: NicFacts) -> bool:
    return nic.operstate.lower() in ("up", "unknown")


def _socket_ifname_values(facts: NodeFacts) -> list[tuple[str, str]]:
    """(where, value) of NCCL_SOCKET_IFNAME in the environment and in this node's .deepspeed_env files."""
    values = []
    if facts.env_vars.get("NCCL_SOCKET_IFNAME"):
        values.append(("environment", facts.env_vars["NCCL_SOCKET_IFNAME"]))
    launcher = facts.launcher
    if known(launcher):
        for file in launcher.deepspeed_env_files:
            if file.exists and known(file.lines):
                entries, _ = parse_deepspeed_env(file.lines, file.path)
                values += [(f"{file.path}:{e.line}", e.value) for e in entries
                           if e.key == "NCCL_SOCKET_IFNAME"]
    return values


@node_check("nccl-socket-ifname-missing", Severity.ERROR, tags=("network", "nccl"),
            why="NCCL_SOCKET_IFNAME names interfaces that do not exist (or are down) here, so NCCL "
                "finds no interface for bootstrap and fails with 'unhandled system error'.",
            fix="set NCCL_SOCKET_IFNAME to an interface that exists on every node (ip -br addr), or "
                "a prefix like 'en' that matches them all")
def check_socket_ifname(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """NCCL_SOCKET_IFNAME selects an up interface on this node."""
    values = _socket_ifname_values(facts)
    if not values:
        raise NotApplicable("NCCL_SOCKET_IFNAME is not set")
    nics = require(require(facts.network, "network facts").nics, "network interfaces")
    exported = (ctx.launch_exports or {}).get("NCCL_SOCKET_IFNAME")
    for where, value in values:
        wrong = _unselectable(value, nics)
        if wrong is None:
            continue
        # Judged by what the ranks get: pdsh runs the launching machine's exports after this node's
        # shell startup, and this node's own .deepspeed_env is read only by a launch from here.
        if where == "environment" and exported and exported != value:
            yield Problem(f"{wrong}, in this node's shell environment (its startup files); DeepSpeed's launcher "
                          f"overrides it with NCCL_SOCKET_IFNAME={exported} from the launching machine, so it "
                          "matters only to programs started outside DeepSpeed's launcher (torchrun, mpirun)",
                          where=where, severity=Severity.WARNING,
                          fix=f"correct or remove the NCCL_SOCKET_IFNAME export in {ctx.host}'s shell startup "
                              "file (~/.bashrc or /etc/environment)")
        elif where != "environment" and not ctx.is_launch_node:
            yield Problem(f"{wrong} (this matters when a job is launched from {ctx.host}: DeepSpeed reads "
                          ".deepspeed_env only where it is launched)", where=where, severity=Severity.WARNING)
        else:
            yield Problem(wrong, where=where)


def _unselectable(value: str, nics: list[NicFacts]) -> str | None:
    """Why NCCL_SOCKET_IFNAME=``value`` gives NCCL no usable interface on these NICs, or None."""
    names = set(select_interfaces(value.strip(), [nic.name for nic in nics]))
    # An exclusion list that leaves only lo leaves nothing that reaches other nodes.
    excluding = value.strip().startswith("^")
    chosen = [nic for nic in nics if nic.name in names and not (excluding and nic.kind == "loopback")]
    if not chosen:
        return f"NCCL_SOCKET_IFNAME={value} selects no interface on this node (it has: " \
               f"{', '.join(sorted(nic.name for nic in nics))})"
    if not any(_iface_up(nic) for nic in chosen):
        return f"NCCL_SOCKET_IFNAME={value} selects only interfaces that are down " \
               f"({', '.join(nic.name for nic in chosen)})"
    return None


@node_check("nccl-socket-ifname-unset", Severity.INFO, tags=("network", "nccl"),
            why="Without NCCL_SOCKET_IFNAME, NCCL picks an interface by itself; on nodes with bridges "
                "or several networks it may pick one the other nodes cannot reach ('NET/Socket : Using "
                "[0]br-...'), and the run hangs at its first collective.",
            fix="echo 'NCCL_SOCKET_IFNAME=<iface>' >> ~/.deepspeed_env   # an interface every node shares")
def check_socket_ifname_unset(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """NCCL_SOCKET_IFNAME is set where several interfaces could carry NCCL traffic."""
    if _socket_ifname_values(facts):
        raise NotApplicable("NCCL_SOCKET_IFNAME is set")
    exported = (ctx.launch_exports or {}).get("NCCL_SOCKET_IFNAME")
    if exported:
        raise NotApplicable(f"the launching machine exports NCCL_SOCKET_IFNAME={exported} to every rank")
    nics = require(require(facts.network, "network facts").nics, "network interfaces")
    candidates = [nic for nic in nics if nic.kind != "loopback" and not nic.name.startswith(DEFAULT_EXCLUDED_PREFIXES)
                  and _iface_up(nic) and nic.ipv4]
    if len(candidates) > 1:
        physical = [nic.name for nic in candidates if nic.kind in ("physical", "ipoib")]
        physical = physical or [candidates[0].name]
        yield Problem(f"NCCL_SOCKET_IFNAME is unset and {len(candidates)} interfaces have addresses "
                      f"({', '.join(nic.name for nic in candidates)})", where="NCCL_SOCKET_IFNAME",
                      fix=f"echo 'NCCL_SOCKET_IFNAME={physical[0]}' >> ~/.deepspeed_env   # if {physical[0]} "
                          "reaches the other nodes")


# -------------------------------------------------------------------------------------- NVLink, P2P


@node_check("nvlink-link-down", Severity.ERROR, tags=("gpu", "nvlink"),
            why="A GPU with fewer active NVLinks than its peers has less bandwidth, and NCCL's rings and "
                "trees through it slow the whole node: a link failed or trained down.",
            fix="nvidia-smi nvlink -s -i N shows each link; reset the GPU or reboot; if a link stays "
                "down, the baseboard or GPU needs service")
def check_nvlink_down(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """Every GPU has as many active NVLinks as the best GPU of the node."""
    linked = [(gpu, gpu.nvlinks) for gpu in node_gpus(facts) if known(gpu.nvlinks) and gpu.nvlinks]
    if not linked:
        raise NotApplicable("no NVLink on this node")
    best = max(sum(link.active for link in links) for _, links in linked)
    if best == 0:
        yield Problem(f"every NVLink of {len(linked)} GPU(s) is inactive", where="NVLink",
                      fix="nvidia-smi nvlink -s   # on NVSwitch systems also: systemctl status "
                          "nvidia-fabricmanager")
        return
    for gpu, links in linked:
        down = [link.link for link in links if not link.active]
        if len(links) - len(down) < best:
            yield Problem(f"GPU {gpu.index} has {len(links) - len(down)} active NVLinks, others {best} "
                          f"(inactive: {', '.join(map(str, down))})", where=gpu_where(gpu),
                          fix=f"nvidia-smi nvlink -s -i {gpu.index}; reset with sudo nvidia-smi -r -i "
                              f"{gpu.index}")


@node_check("nvlink-errors", Severity.WARNING, tags=("gpu", "nvlink"),
            why="NVLink CRC, replay and recovery errors mean retransmissions on a marginal link; "
                "recovery errors in particular precede Xid 74 and link loss.",
            fix="watch nvidia-smi nvlink -e; reset the GPU; service the baseboard if counters keep rising")
def check_nvlink_errors(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """NVLink error counters are zero."""
    linked = [gpu for gpu in node_gpus(facts) if known(gpu.nvlinks) and gpu.nvlinks]
    if not linked:
        raise NotApplicable("no NVLink on this node")
    for gpu in linked:
        for link in gpu.nvlinks:  # type: ignore[union-attr]
            counters = (("CRC", link.crc_errors), ("replay", link.replay_errors),
                        ("recovery", link.recovery_errors))
            counts = [(name, value) for name, value in counters if known(value) and value > 0]
            if counts:
                text = ", ".join(f"{value} {name}" for name, value in counts)
                yield Problem(f"GPU {gpu.index} NVLink {link.link}: {text} errors", where=gpu_where(gpu),
                              fix=f"nvidia-smi nvlink -e -i {gpu.index}")


@node_check("gpu-p2p-unsupported", Severity.WARNING, tags=("gpu", "p2p", "topology"),
            why="Without GPU peer-to-peer, NCCL stages intra-node traffic through host memory: slower "
                "collectives. Often ACS or the IOMMU on PCIe switches, or GPUs on different sockets.",
            fix="disable PCIe ACS on the switches and use iommu=pt, or accept the slower path; "
                "nvidia-smi topo -p2p r shows the matrix")
def check_p2p(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """GPUs of a multi-GPU node can reach each other peer-to-peer."""
    if len(node_gpus(facts)) < 2:
        raise NotApplicable("fewer than two GPUs")
    nvidia = require(facts.nvidia, "NVIDIA facts")
    topology = require(nvidia.topology, "GPU topology")
    matrix = topology.p2p_read if known(topology.p2p_read) else require(topology.p2p_write, "P2P matrix")
    if len(matrix) < 2:
        raise NotApplicable("fewer than two GPUs")
    gpu_names = [d for d in topology.devices if d.upper().startswith("GPU")]
    names = gpu_names if len(gpu_names) == len(matrix) else [f"GPU{i}" for i in range(len(matrix))]
    bad = [(i, j, matrix[i][j].strip().upper()) for i in range(len(matrix)) for j in range(i + 1, len(matrix))
           if j < len(matrix[i]) and matrix[i][j].strip().upper() not in ("OK", "X")]
    pairs = len(matrix) * (len(matrix) - 1) // 2
    statuses = {status for _, _, status in bad}
    if bad and len(bad) == pairs and len(statuses) == 1:
        status = statuses.pop()
        yield Problem(f"P2P is {P2P_STATUS.get(status, status)} ({status}) between all {len(matrix)} GPUs",
                      where="GPU topology")
        return
    for i, j, status in bad:
        yield Problem(f"P2P between {names[i]} and {names[j]}: {P2P_STATUS.get(status, status)} ({status})",
                      where=f"{names[i]}<->{names[j]}")
