"""What changed between two saved runs, per node: the one place that compares runs.

Each node's facts are read into flat, labelled readings (:func:`node_readings`): software versions and
settings, hardware identity and links, health counters. Two runs' readings are compared label by label
on every node both runs have facts for; a software or hardware reading that differs is a change, a
counter is a change only when it grew (a reboot resets volatile counters; that is no news). Measured
figures (:class:`~clusterkit.core.saved_run.Figure`) are a change only when they fell by more than the
run-to-run noise (``tolerance``, a share of the earlier figure). Rendering the changes as findings
grouped by host list is :mod:`clusterkit.core.change_report`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from clusterkit.core.saved_run import SavedRun
from clusterkit.node.facts import (
    GpuFacts,
    LauncherFacts,
    Maybe,
    NetworkFacts,
    NodeFacts,
    NvidiaFacts,
    PythonEnvFacts,
    Unavailable,
)

SOFTWARE, HARDWARE, COUNTER, FIGURE = "software", "hardware", "counter", "figure"
#: A figure fell when it is below ``(1 - tolerance)`` of the saved one. Set from the noise measured on
#: the namespace cluster (bench/baseline.py noise: 3 nodes, gloo over veth on 2 shared CPU cores): four
#: repeats of an unchanged cluster had one run's busbw up to 66% below another's, so only a fall past 75%
#: counts by default. GPUs over NCCL repeat far more closely: there ``--noise 0.2`` (not measured here).
DEFAULT_TOLERANCE = 0.75
#: Reading value of a fact that could not be read (its reason varies from run to run; the fact did not).
UNREADABLE = "unavailable"
ABSENT = "(none)"
#: A figure's value in this run when the saved run has it and this run tried it and measured nothing
#: (a pair that failed this time, :attr:`Figure.failed`): the worst fall there is, never "unchanged".
NOT_MEASURED = "not measured"

Value = str | int | float


@dataclass(frozen=True)
class Reading:
    kind: str
    value: Value
    #: A reading of something that comes and goes by design (a container's veth, a bridge): its
    #: appearing or vanishing between runs is not a change; a change while it is in both runs is.
    transient: bool = False


@dataclass(frozen=True)
class Change:
    """One reading that changed on one host (or one figure on its subject) between the two runs."""

    host: str
    kind: str
    label: str
    before: str
    after: str
    #: For figures: the share it fell (0.3 = 30% lower).
    fell_by: float = 0.0

    @property
    def not_measured(self) -> bool:
        """A figure this run tried and could not measure (its ``after`` says why)."""
        return self.after.startswith(NOT_MEASURED)


@dataclass
class Comparison:
    """The changes, and what was compared (for "unchanged" and for who is missing)."""

    changes: list[Change] = field(default_factory=list)
    #: Hosts with facts in both runs.
    fact_hosts: list[str] = field(default_factory=list)
    #: Metric -> subjects measured in both runs.
    figure_subjects: dict[str, list[str]] = field(default_factory=dict)
    #: Hosts of one run and not the other.
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    #: Host -> why it could not be compared (facts missing in one run).
    not_compared: dict[str, str] = field(default_factory=dict)
    #: How many figures each run has (saved run, this run): "nothing compared" says which one measured none.
    figure_counts: tuple[int, int] = (0, 0)


# ------------------------------------------------------------------------------------------ readings


def _v(value: Maybe[object]) -> Value:
    if isinstance(value, Unavailable):
        return UNREADABLE
    if value is None:
        return ABSENT
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float, str)):
        return value
    return str(value)


def node_readings(facts: NodeFacts) -> dict[str, Reading]:
    """A node's comparable facts by label (``driver``, ``GPU 0 PCIe width``, ``GPU 0 ECC uncorrected``)."""
    readings: dict[str, Reading] = {}
    passing = _passing_nics(facts)
    for kind, label, value in _readings(facts):
        readings[label] = Reading(kind, value, label.startswith("NIC ") and label.split()[1] in passing)
    return readings


def _passing_nics(facts: NodeFacts) -> set[str]:
    """Virtual and bridge interfaces: containers and VMs add and remove them as they start and stop."""
    if isinstance(facts.network, Unavailable) or isinstance(facts.network.nics, Unavailable):
        return set()
    return {nic.name for nic in facts.network.nics if nic.kind in ("virtual", "bridge")}


def _readings(facts: NodeFacts) -> Iterator[tuple[str, str, Value]]:
    yield SOFTWARE, "kernel", facts.host.kernel
    yield SOFTWARE, "OS", _v(facts.host.os_name)
    if not isinstance(facts.nvidia, Unavailable):
        yield from _nvidia(facts.nvidia)
    if not isinstance(facts.cuda, Unavailable):
        yield SOFTWARE, "nvcc", _v(facts.cuda.nvcc_version)
    if not isinstance(facts.python_env, Unavailable):
        yield from _python_env(facts.python_env)
    if not isinstance(facts.network, Unavailable):
        yield from _network(facts.network)
    if not isinstance(facts.launcher, Unavailable):
        yield from _deepspeed_env(facts.launcher)
    for name in sorted(facts.env_vars):
        if name.startswith("NCCL_"):
            yield SOFTWARE, f"env {name}", facts.env_vars[name]


def _nvidia(nvidia: NvidiaFacts) -> Iterator[tuple[str, str, Value]]:
    yield SOFTWARE, "driver", _v(nvidia.driver_version)
    yield SOFTWARE, "CUDA driver", _v(nvidia.cuda_driver_version)
    if not isinstance(nvidia.gpus, Unavailable):
        yield HARDWARE, "GPUs", len(nvidia.gpus)
        for gpu in nvidia.gpus:
            yield from _gpu(gpu)
    if not isinstance(nvidia.xid_events, Unavailable):
        codes: dict[int, int] = {}
        for event in nvidia.xid_events:
            codes[event.code] = codes.get(event.code, 0) + 1
        for code, count in sorted(codes.items()):
            yield COUNTER, f"XID {code} events", count


def _gpu(gpu: GpuFacts) -> Iterator[tuple[str, str, Value]]:
    slot = f"GPU {gpu.index}"
    yield HARDWARE, f"{slot} model", gpu.name
    yield HARDWARE, f"{slot} UUID", gpu.uuid
    yield HARDWARE, f"{slot} bus", gpu.bus_id
    yield HARDWARE, f"{slot} PCIe gen", _v(gpu.pcie_gen_current)
    width = gpu.pcie_width_current
    yield HARDWARE, f"{slot} PCIe width", f"x{width}" if isinstance(width, int) else _v(width)
    yield HARDWARE, f"{slot} max SM clock MHz", _v(gpu.sm_clock_max_mhz)
    yield HARDWARE, f"{slot} max memory clock MHz", _v(gpu.mem_clock_max_mhz)
    yield HARDWARE, f"{slot} power limit W", _v(gpu.power_limit_w)
    yield HARDWARE, f"{slot} ECC mode", _v(gpu.ecc.mode_enabled)
    yield COUNTER, f"{slot} ECC corrected", _v(gpu.ecc.aggregate_corrected)
    yield COUNTER, f"{slot} ECC uncorrected", _v(gpu.ecc.aggregate_uncorrected)
    yield COUNTER, f"{slot} remapped rows correctable", _v(gpu.remapped_rows.correctable)
    yield COUNTER, f"{slot} remapped rows uncorrectable", _v(gpu.remapped_rows.uncorrectable)
    yield COUNTER, f"{slot} retired pages", _v(_sum(gpu.retired_pages.single_bit, gpu.retired_pages.double_bit))
    yield COUNTER, f"{slot} PCIe replays", _v(gpu.pcie_replay_count)
    if not isinstance(gpu.nvlinks, Unavailable):
        yield HARDWARE, f"{slot} NVLink links active", sum(1 for link in gpu.nvlinks if link.active)
        for what in ("crc_errors", "replay_errors", "recovery_errors"):
            total = _sum(*(getattr(link, what) for link in gpu.nvlinks))
            yield COUNTER, f"{slot} NVLink {what.replace('_', ' ')}", _v(total)


def _sum(*values: Maybe[int]) -> Maybe[int]:
    known = [v for v in values if isinstance(v, int)]
    return sum(known) if known else Unavailable("none read")


def _python_env(env: PythonEnvFacts) -> Iterator[tuple[str, str, Value]]:
    yield SOFTWARE, "Python", _v(env.version)
    yield SOFTWARE, "torch", _v(env.torch_version)
    yield SOFTWARE, "torch CUDA", _v(env.torch_cuda)
    yield SOFTWARE, "DeepSpeed", _v(env.deepspeed_version)
    yield SOFTWARE, "NCCL", _v(env.nccl_version)
    yield SOFTWARE, "env package hash", _v(env.env_hash)


def _network(network: NetworkFacts) -> Iterator[tuple[str, str, Value]]:
    if not isinstance(network.nics, Unavailable):
        for nic in network.nics:
            if nic.kind != "loopback":
                yield HARDWARE, f"NIC {nic.name} state", nic.operstate
                yield HARDWARE, f"NIC {nic.name} speed Mb/s", _v(nic.speed_mbps)
    if not isinstance(network.ib_ports, Unavailable):
        for port in network.ib_ports:
            name = f"IB {port.device}/{port.port}"
            yield HARDWARE, f"{name} state", f"{port.state} {port.phys_state}"
            yield HARDWARE, f"{name} rate", port.rate


def _deepspeed_env(launcher: LauncherFacts) -> Iterator[tuple[str, str, Value]]:
    for file in launcher.deepspeed_env_files:
        if not file.exists:
            yield SOFTWARE, file.path, "missing"
            continue
        if isinstance(file.lines, Unavailable):
            yield SOFTWARE, file.path, UNREADABLE
            continue
        yield SOFTWARE, file.path, "present"
        for line in file.lines:
            key, sep, value = line.strip().partition("=")
            if sep and key and not key.startswith("#"):
                yield SOFTWARE, f"{file.path} {key.strip()}", value.strip()


# ------------------------------------------------------------------------------------------ compare


def compare_runs(before: SavedRun, after: SavedRun, tolerance: float = DEFAULT_TOLERANCE) -> Comparison:
    """Every change from ``before`` to ``after``, node by node, then the figures that fell."""
    result = Comparison(added=[h for h in after.hosts if h not in before.hosts],
                        removed=[h for h in before.hosts if h not in after.hosts],
                        figure_counts=(len(before.figures), len(after.figures)))
    for host in after.hosts:
        old, new = before.facts.get(host), after.facts.get(host)
        if old is None or new is None:
            continue
        if isinstance(old, Unavailable) or isinstance(new, Unavailable):
            gone = old if isinstance(old, Unavailable) else new
            assert isinstance(gone, Unavailable)
            result.not_compared[host] = f"no facts in the {'earlier' if gone is old else 'new'} run ({gone.reason})"
            continue
        result.fact_hosts.append(host)
        result.changes += _fact_changes(host, node_readings(old), node_readings(new))
    result.changes += _figure_changes(before, after, tolerance, result.figure_subjects)
    return result


def _text(value: Value | None) -> str:
    if value is None:
        return ABSENT
    return f"{value:g}" if isinstance(value, float) else str(value)


def _fact_changes(host: str, old: dict[str, Reading], new: dict[str, Reading]) -> list[Change]:
    changes = []
    for label in [*old, *(label for label in new if label not in old)]:
        was, now = old.get(label), new.get(label)
        if (was is None or now is None) and (was or now).transient:  # type: ignore[union-attr]
            continue
        kind = (now or was).kind  # type: ignore[union-attr]
        before = was.value if was else None
        after = now.value if now else None
        if kind == COUNTER:
            if (isinstance(after, int) and (before is None or isinstance(before, int))
                    and after > (before or 0)):
                changes.append(Change(host, kind, label, _text(before or 0), _text(after)))
        elif before != after:
            changes.append(Change(host, kind, label, _text(before), _text(after)))
    return changes


def _figure_changes(before: SavedRun, after: SavedRun, tolerance: float,
                    compared: dict[str, list[str]]) -> list[Change]:
    old = {(f.subject, f.metric): f for f in before.figures}
    changes = []
    for figure in after.figures:
        saved = old.get((figure.subject, figure.metric))
        if saved is None or saved.value <= 0 or saved.failed:
            continue
        compared.setdefault(figure.metric, []).append(figure.subject)
        fell_by = 1.0 - figure.value / saved.value
        if fell_by > tolerance:
            now = f"{NOT_MEASURED} ({figure.failed})" if figure.failed else f"{figure.value:.4g} {figure.unit}".strip()
            changes.append(Change(figure.subject, FIGURE, figure.metric, f"{saved.value:.4g} {saved.unit}".strip(),
                                  now, fell_by))
    return changes
