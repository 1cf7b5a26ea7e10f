"""Network interfaces and RDMA ports, read from /sys, with addresses from ``ip -j addr`` or /proc.

NCCL picks its socket interface and IB HCAs from exactly these: what kind each interface is, whether
it is up, its NUMA node (a NIC on the far socket halves bandwidth), and which RDMA ports are ACTIVE.
Stdlib only, Python 3.8 syntax: ships inside the agent.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import re
import struct
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from clusterkit.node.collect.deadline import run_command
from clusterkit.node.collect.options import CollectOptions
from clusterkit.node.facts import IbPortFacts, Maybe, NetworkFacts, NicFacts, Unavailable, known

ARPHRD_INFINIBAND = 32
ARPHRD_LOOPBACK = 772
#: ifname -> (ipv4 list, ipv6 list), each address written "addr/prefixlen".
Addresses = Dict[str, Tuple[List[str], List[str]]]
IP_ADDR_COMMAND = ("ip", "-j", "addr", "show")


def _read(path: Path) -> Maybe[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(1 << 16).strip()
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return Unavailable(f"{path}: not reported by the driver (EINVAL)")
        return Unavailable(f"cannot read {path}: {exc.strerror or exc}")


def _read_int(path: Path) -> Maybe[int]:
    text = _read(path)
    if not known(text):
        return text
    try:
        return int(text, 0) if text.startswith("0x") else int(text)
    except ValueError:
        return Unavailable(f"{path}: not a number: {text!r:.40}")


# --------------------------------------------------------------------------------------------- NICs


def nic_kind(iface: Path) -> str:
    """loopback, ipoib (ARP type 32), bridge, physical (has a ``device`` link) or virtual."""
    arp_type = _read_int(iface / "type")
    if iface.name == "lo" or arp_type == ARPHRD_LOOPBACK:
        return "loopback"
    if arp_type == ARPHRD_INFINIBAND:
        return "ipoib"
    if (iface / "bridge").is_dir():
        return "bridge"
    if (iface / "device").exists():
        return "physical"
    return "virtual"


def _speed(iface: Path) -> Maybe[int]:
    speed = _read_int(iface / "speed")
    if not known(speed):
        return speed
    # -1 (or its unsigned form on old kernels) means "no link / unknown".
    if speed < 0 or speed == 0xFFFFFFFF:
        return Unavailable(f"{iface.name}: speed unknown ({speed}): no link, or the driver does not say")
    return speed


def _device_numa_node(device: Path) -> Maybe[int]:
    if not device.exists():
        return Unavailable(f"{device.parent.name}: no device link (virtual interface)")
    if not (device / "numa_node").exists():
        return Unavailable(f"{device.parent.name}: its device ({device.resolve().name}) has no numa_node"
                           " (not a PCI function)")
    node = _read_int(device / "numa_node")
    if known(node) and node < 0:
        return Unavailable(f"{device.parent.name}: the kernel reports no NUMA affinity ({node})")
    return node


def read_nics(sysfs_root: str = "/sys", addresses: Addresses | None = None) -> Maybe[list[NicFacts]]:
    """Every interface in ``/sys/class/net``, with its addresses from ``addresses``."""
    base = Path(sysfs_root, "class/net")
    try:
        entries = sorted(base.iterdir(), key=lambda p: p.name)
    except OSError as exc:
        return Unavailable(f"cannot list {base}: {exc.strerror or exc}")
    found = addresses or {}
    nics = []
    for iface in entries:
        operstate = _read(iface / "operstate")
        ipv4, ipv6 = found.get(iface.name, ([], []))
        nics.append(NicFacts(
            name=iface.name,
            kind=nic_kind(iface),
            operstate=operstate if known(operstate) and operstate else "unknown",
            mtu=_read_int(iface / "mtu"),
            speed_mbps=_speed(iface),
            ipv4=list(ipv4),
            ipv6=list(ipv6),
            numa_node=_device_numa_node(iface / "device"),
        ))
    return nics


# ---------------------------------------------------------------------------------------- addresses


def parse_ip_addr_json(text: str) -> Maybe[Addresses]:
    """``ip -j addr`` output as ifname -> (ipv4, ipv6), each ``addr/prefixlen``."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        return Unavailable(f"ip -j addr printed malformed JSON: {exc}")
    if not isinstance(data, list):
        return Unavailable(f"ip -j addr printed {type(data).__name__}, not a list")
    result: Addresses = {}
    for link in data:
        if not isinstance(link, dict) or not isinstance(link.get("ifname"), str):
            continue
        ipv4, ipv6 = result.setdefault(link["ifname"], ([], []))
        infos = link.get("addr_info")
        for info in infos if isinstance(infos, list) else []:
            if not isinstance(info, dict):
                continue
            local, prefix = info.get("local"), info.get("prefixlen")
            if not isinstance(local, str) or not isinstance(prefix, int) or isinstance(prefix, bool):
                continue
            if info.get("family") == "inet":
                ipv4.append(f"{local}/{prefix}")
            elif info.get("family") == "inet6":
                ipv6.append(f"{local}/{prefix}")
    return result


def parse_if_inet6(text: str) -> dict[str, list[str]]:
    """``/proc/net/if_inet6`` (hex address, ifindex, prefix, scope, flags, name) as name -> addresses."""
    result: dict[str, list[str]] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) != 6 or not re.match(r"^[0-9a-fA-F]{32}$", fields[0]):
            continue
        try:
            address = ipaddress.IPv6Address(bytes.fromhex(fields[0]))
            prefix = int(fields[2], 16)
        except ValueError:
            continue
        result.setdefault(fields[5], []).append(f"{address.compressed}/{prefix}")
    return result


def _route_hex_to_address(text: str) -> ipaddress.IPv4Address:
    # /proc/net/route prints the network-order address as a host-order u32.
    return ipaddress.IPv4Address(struct.pack("=I", int(text, 16)))


def parse_ipv4_from_proc(fib_trie: str, route: str) -> dict[str, list[str]]:
    """Best-effort IPv4 addresses without ``ip`` or ioctls.

    Local addresses are the ``/32 host LOCAL`` leaves of ``/proc/net/fib_trie``; each is given the
    interface and prefix of the directly connected route in ``/proc/net/route`` that holds it
    (loopback addresses go to ``lo``). An address with no such route is left out.
    """
    local: list[ipaddress.IPv4Address] = []
    previous = ""
    for line in fib_trie.splitlines():
        stripped = line.strip()
        if stripped.startswith("/32 host LOCAL"):
            match = re.match(r"^[|+]--\s+(\d+\.\d+\.\d+\.\d+)$", previous)
            if match:
                try:
                    address = ipaddress.IPv4Address(match.group(1))
                except ValueError:
                    address = None
                if address is not None and address not in local:
                    local.append(address)
        previous = stripped
    routes: list[tuple[str, ipaddress.IPv4Network]] = []
    for line in route.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        try:
            gateway = int(fields[2], 16)
            destination = _route_hex_to_address(fields[1])
            mask = _route_hex_to_address(fields[7])
            network = ipaddress.IPv4Network(f"{destination}/{mask}", strict=False)
        except (ValueError, struct.error):
            continue
        if gateway == 0 and network.prefixlen > 0:
            routes.append((fields[0], network))
    result: dict[str, list[str]] = {}
    for address in local:
        if address.is_loopback:
            result.setdefault("lo", []).append(f"{address}/8")
            continue
        holders = [(net.prefixlen, name) for name, net in routes if address in net]
        if holders:
            prefix, name = max(holders)
            result.setdefault(name, []).append(f"{address}/{prefix}")
    return result


def read_addresses(proc_root: str = "/proc", ip_command: Sequence[str] = IP_ADDR_COMMAND,
                   timeout_s: float = 3.0) -> tuple[Addresses, Maybe[str]]:
    """Addresses per interface, and where they came from (or why none could be read)."""
    ip_problem: str
    result = run_command(list(ip_command), timeout_s=timeout_s)
    if known(result) and result.ok:
        parsed = parse_ip_addr_json(result.stdout)
        if known(parsed):
            return parsed, " ".join(ip_command)
        ip_problem = parsed.reason
    elif known(result):
        ip_problem = f"{' '.join(ip_command)} exited {result.returncode}: {result.tail(1)}"
    else:
        ip_problem = result.reason

    net = Path(proc_root, "net")
    addresses: Addresses = {}
    sources = []
    inet6 = _read_whole(net / "if_inet6")
    if known(inet6):
        sources.append(str(net / "if_inet6"))
        for name, found in parse_if_inet6(inet6).items():
            addresses.setdefault(name, ([], []))[1].extend(found)
    fib_trie, route = _read_whole(net / "fib_trie"), _read_whole(net / "route")
    if known(fib_trie) and known(route):
        sources.append(f"{net / 'fib_trie'} + {net / 'route'}")
        for name, found in parse_ipv4_from_proc(fib_trie, route).items():
            addresses.setdefault(name, ([], []))[0].extend(found)
    if not sources:
        reasons = [r.reason for r in (inet6, fib_trie, route) if not known(r)]
        return {}, Unavailable(f"{ip_problem}; and " + "; ".join(reasons))
    return addresses, "{} (best effort: {})".format(" and ".join(sources), ip_problem)


def _read_whole(path: Path) -> Maybe[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(1 << 22)
    except OSError as exc:
        return Unavailable(f"cannot read {path}: {exc.strerror or exc}")


# --------------------------------------------------------------------------------------------- RDMA


def parse_ib_state(text: str) -> str:
    """``"4: ACTIVE"`` -> ``"ACTIVE"``; ``"5: LinkUp"`` -> ``"LinkUp"``; other text stripped as is."""
    _, sep, name = text.partition(":")
    return name.strip() if sep and name.strip() else text.strip()


def parse_ib_rate(text: str) -> Maybe[float]:
    """``"200 Gb/sec (4X HDR)"`` -> ``200.0``."""
    match = re.match(r"^\s*(\d+(?:\.\d+)?)\s*Gb/sec", text)
    if not match:
        return Unavailable(f"unrecognised rate {text.strip()!r:.60}")
    return float(match.group(1))


def _port_netdevs(device_dir: Path, port: int, port_count: int) -> list[str]:
    try:
        names = sorted(p.name for p in (device_dir / "device" / "net").iterdir())
    except OSError:
        return []
    if port_count <= 1 or len(names) <= 1:
        return names
    # Several ports on one PCI function: a netdev's dev_port is its port number minus one.
    matching = [name for name in names
                if _read_int(device_dir / "device" / "net" / name / "dev_port") == port - 1]
    return matching or names


def read_ib_ports(sysfs_root: str = "/sys") -> Maybe[list[IbPortFacts]]:
    """Every port of every device in ``/sys/class/infiniband`` (IB and RoCE); [] when there are none."""
    base = Path(sysfs_root, "class/infiniband")
    if not base.exists():
        return []
    try:
        devices = sorted(base.iterdir(), key=lambda p: p.name)
    except OSError as exc:
        return Unavailable(f"cannot list {base}: {exc.strerror or exc}")
    ports: list[IbPortFacts] = []
    for device in devices:
        try:
            port_dirs = sorted((p for p in (device / "ports").iterdir() if p.name.isdigit()),
                               key=lambda p: int(p.name))
        except OSError:
            continue
        numa_node = _device_numa_node(device / "device")
        for port_dir in port_dirs:
            port = int(port_dir.name)
            state, phys_state = _read(port_dir / "state"), _read(port_dir / "phys_state")
            rate, link_layer = _read(port_dir / "rate"), _read(port_dir / "link_layer")
            ports.append(IbPortFacts(
                device=device.name,
                port=port,
                state=parse_ib_state(state) if known(state) else "unknown",
                phys_state=parse_ib_state(phys_state) if known(phys_state) else "unknown",
                rate=rate if known(rate) else "unknown",
                rate_gbps=parse_ib_rate(rate) if known(rate) else rate,
                link_layer=link_layer if known(link_layer) and link_layer else "unknown",
                netdevs=_port_netdevs(device, port, len(port_dirs)),
                numa_node=numa_node,
            ))
    return ports


# ------------------------------------------------------------------------------------------ section


def collect_network(options: CollectOptions, sysfs_root: str = "/sys", proc_root: str = "/proc",
                    ip_command: Sequence[str] = IP_ADDR_COMMAND,
                    command_timeout_s: float = 3.0) -> NetworkFacts:
    """Interfaces with addresses, and RDMA ports. ``options`` is unused: nothing here is configurable."""
    addresses, source = read_addresses(proc_root, ip_command, command_timeout_s)
    return NetworkFacts(
        nics=read_nics(sysfs_root, addresses),
        ib_ports=read_ib_ports(sysfs_root),
        addresses_source=source,
    )
