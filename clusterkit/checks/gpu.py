"""GPU health checks over NVML facts: presence, PCIe, ECC and row remapping, clocks, temperature, modes.

Severities follow NVIDIA's GPU health guidance: an uncorrectable volatile ECC error means drain the
node, pending row remapping means reset the GPU, a remapping failure means RMA; XID codes carry
their catalog meaning. NVLink and P2P checks live with the other interconnects in
:mod:`clusterkit.checks.network`. The helpers at the top are shared by the other check modules.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from clusterkit.checks.registry import NodeContext, node_check
from clusterkit.core.findings import NotApplicable, Problem, Severity, require
from clusterkit.node.facts import GpuFacts, NodeFacts, NvidiaFacts, Unavailable, known

# ------------------------------------------------------------------------------------------ helpers


def short_bus_id(bus_id: str) -> str:
    """NVML's ``00000000:3B:00.0`` -> lspci's ``0000:3b:00.0``; anything else unchanged."""
    parts = bus_id.split(":")
    if len(parts) == 3 and len(parts[0]) == 8:
        parts[0] = parts[0][4:]
    return ":".join(parts).lower()


def gpu_where(gpu: GpuFacts) -> str:
    """``GPU 3 (0000:3b:00.0)``: the index CUDA and nvidia-smi use, and the PCI address."""
    return f"GPU {gpu.index} ({short_bus_id(gpu.bus_id)})"


def gpu_list(indices: Sequence[int]) -> str:
    """``GPU 3`` or ``GPUs 0-3, 6``."""
    ordered = sorted(indices)
    runs: list[str] = []
    start = prev = ordered[0] if ordered else 0
    for index in [*ordered[1:], None]:
        if index is not None and index == prev + 1:
            prev = index
            continue
        runs.append(f"{start}-{prev}" if prev > start else str(start))
        if index is not None:
            start = prev = index
    return ("GPU " if len(ordered) == 1 else "GPUs ") + ", ".join(runs)


def gpu_device_files(nvidia: NvidiaFacts) -> list[str]:
    """``/dev/nvidia0``... (one per GPU), without ``nvidiactl``, ``nvidia-uvm`` and the like."""
    return [path for path in nvidia.device_files if path.rsplit("nvidia", 1)[-1].isdigit()]


def gpus_present(facts: NodeFacts) -> bool:
    """True when the node has NVIDIA GPUs, by NVML or by device files."""
    if not known(facts.nvidia):
        return False
    gpus = facts.nvidia.gpus
    return (known(gpus) and len(gpus) > 0) or bool(gpu_device_files(facts.nvidia))


def cpu_only_run(facts: NodeFacts) -> str | None:
    """Why this node runs DeepSpeed on CPU (no GPU, and torch is a CPU build or DS_ACCELERATOR=cpu)."""
    if gpus_present(facts):
        return None
    if facts.env_vars.get("DS_ACCELERATOR") == "cpu":
        return "DS_ACCELERATOR=cpu and no NVIDIA GPU"
    env = facts.python_env
    if known(env) and known(env.torch_cuda) and env.torch_cuda is None:
        return "no NVIDIA GPU and torch is a CPU build"
    return None


def gpu_need_unknown(facts: NodeFacts) -> str | None:
    """Why it cannot be told whether this node should have GPUs (None: it can): none is visible and the
    training env, whose torch build says whether this is a CPU run, could not be read."""
    if gpus_present(facts) or cpu_only_run(facts) or "DS_ACCELERATOR" in facts.env_vars:
        return None
    env = facts.python_env
    why = env.reason if not known(env) else (
        f"{env.interpreter} does not exist here (interpreter-missing)" if not env.exists else
        None if known(env.torch_cuda) else f"torch in {env.interpreter}: {env.torch_cuda.reason}")
    return f"no GPU is visible and the training env could not be read ({why}): whether this node should " \
           "have GPUs is unknown" if why else None


def node_gpus(facts: NodeFacts) -> list[GpuFacts]:
    """The GPUs NVML read, or skip the check saying why there are none to judge."""
    nvidia = require(facts.nvidia, "NVIDIA facts")
    cpu_reason = cpu_only_run(facts)
    if cpu_reason and not known(nvidia.gpus):
        raise NotApplicable(cpu_reason)
    gpus = require(nvidia.gpus, "GPU list (NVML)")
    if not gpus:
        raise NotApplicable("no NVIDIA GPUs on this node")
    return gpus


def readable_gpus(facts: NodeFacts, what: str, read: Callable[[GpuFacts], object]) -> list[GpuFacts]:
    """GPUs for which ``read(gpu)`` was read; skip the check when no GPU has it.

    Called before a check yields anything: a check must never skip after finding a problem, or the
    runner drops what it found.
    """
    gpus = node_gpus(facts)
    readable = [gpu for gpu in gpus if not isinstance(read(gpu), Unavailable)]
    if not readable:
        first = read(gpus[0])
        raise NotApplicable(f"{what} unavailable: {first.reason if isinstance(first, Unavailable) else first}")
    return readable


def under_load(gpu: GpuFacts) -> bool:
    """Busy enough that power saving does not explain low clocks or a low PCIe gen.

    NVML's ``gpu_idle`` clock-event reason is the most direct idle signal; P0/P2 without it count
    as busy (an H100 sits in P0 at idle, but then reports ``gpu_idle``).
    """
    if known(gpu.utilization_gpu_pct) and gpu.utilization_gpu_pct > 0:
        return True
    if known(gpu.clock_event_reasons) and "gpu_idle" in gpu.clock_event_reasons:
        return False
    return known(gpu.performance_state) and gpu.performance_state in (0, 2)


def _gib(value: int) -> str:
    return f"{value / 1024**3:.1f} GiB"


# --------------------------------------------------------------------------------- presence, count


@node_check("nvml-unavailable", Severity.ERROR, tags=("gpu", "nvml"),
            why="Without NVML nothing about the GPUs can be judged, and a driver NVML cannot talk to "
                "usually cannot run CUDA either (driver/library mismatch after an upgrade, missing "
                "libnvidia-ml, a wedged GPU).",
            fix="nvidia-smi   # if it fails too, reload the driver or reboot; if only NVML fails: "
                "pip install nvidia-ml-py")
def check_nvml_unavailable(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """NVML answers on a node that has (or should have) NVIDIA GPUs."""
    reason = cpu_only_run(facts) or gpu_need_unknown(facts)
    if not known(facts.nvidia):
        if ctx.expected_gpus and not reason:
            yield Problem(f"GPU facts could not be collected ({facts.nvidia.reason}) but the hostfile "
                          f"gives this node {ctx.expected_gpus} slots")
            return
        raise NotApplicable(f"NVIDIA facts unavailable: {facts.nvidia.reason}")
    nvidia = facts.nvidia
    if known(nvidia.gpus):
        return
    files = gpu_device_files(nvidia)
    if files:
        yield Problem(f"NVML cannot be read ({nvidia.gpus.reason}) although {len(files)} GPU device "
                      f"file(s) exist ({', '.join(files[:4])}{'...' if len(files) > 4 else ''})",
                      where="NVML")
    elif ctx.expected_gpus and not reason:
        yield Problem(f"NVML cannot be read ({nvidia.gpus.reason}) and no /dev/nvidiaN exists, but the "
                      f"hostfile gives this node {ctx.expected_gpus} slots", where="NVML")
    else:
        raise NotApplicable(reason or "no NVIDIA GPU device files and no hostfile slots to expect GPUs")


def _gpu_count(facts: NodeFacts, ctx: NodeContext) -> tuple[int, int]:
    """(GPUs on the node, hostfile slots), or skip."""
    if ctx.expected_gpus is None:
        raise NotApplicable("no hostfile: nothing to compare the GPU count with")
    reason = cpu_only_run(facts)
    if reason:
        raise NotApplicable(f"{reason}: slots are CPU processes")
    unknown = gpu_need_unknown(facts)
    if unknown:
        raise NotApplicable(unknown)
    nvidia = require(facts.nvidia, "NVIDIA facts")
    count = len(nvidia.gpus) if known(nvidia.gpus) else len(gpu_device_files(nvidia))
    return count, ctx.expected_gpus


@node_check("gpu-count-below-slots", Severity.ERROR, tags=("gpu", "hostfile"),
            why="DeepSpeed starts one rank per slot; with more slots than GPUs two ranks share a GPU and "
                "NCCL stops with 'Duplicate GPU detected : rank 4 and rank 0 both on CUDA device'.",
            fix="set slots= to the node's GPU count in the hostfile")
def check_gpu_count_below_slots(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """The node has at least as many GPUs as its hostfile slots."""
    count, slots = _gpu_count(facts, ctx)
    if count < slots:
        yield Problem(f"hostfile gives {ctx.host} {slots} slots but it has {count} GPU(s)",
                      where=f"{ctx.host} slots={slots}",
                      fix=f"write '{ctx.host} slots={count}' in the hostfile" if count else
                          "install the NVIDIA driver, or remove this host from the hostfile")


@node_check("gpu-count-above-slots", Severity.WARNING, tags=("gpu", "hostfile"),
            why="GPUs beyond the hostfile's slots stay idle for the whole run.",
            fix="raise slots= to the node's GPU count in the hostfile, if the idle GPUs are not reserved")
def check_gpu_count_above_slots(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """The hostfile uses every GPU of the node."""
    count, slots = _gpu_count(facts, ctx)
    if count > slots:
        yield Problem(f"{ctx.host} has {count} GPUs but the hostfile gives it {slots} slots: "
                      f"{count - slots} GPU(s) stay idle", where=f"{ctx.host} slots={slots}",
                      fix=f"write '{ctx.host} slots={count}' in the hostfile")


# ---------------------------------------------------------------------------------------------- PCIe


@node_check("pcie-width-degraded", Severity.ERROR, tags=("gpu", "pcie"),
            why="A PCIe link narrower than the slot allows (x8 instead of x16) halves host<->GPU "
                "bandwidth for good: a bad riser, a dirty or half-seated card, or the wrong slot.",
            fix="reseat the GPU or its riser, check the slot's wiring; nvidia-smi -q -d PCIE shows the link")
def check_pcie_width(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """Every GPU's PCIe link runs at its full width."""
    for gpu in readable_gpus(facts, "PCIe link width", lambda g: g.pcie_width_current):
        width, width_max = gpu.pcie_width_current, gpu.pcie_width_max
        if known(width) and known(width_max) and width < width_max:
            gen = f"Gen{gpu.pcie_gen_current} " if known(gpu.pcie_gen_current) else ""
            yield Problem(f"GPU {gpu.index} PCIe link runs {gen}x{width}, max x{width_max}",
                          where=gpu_where(gpu))


@node_check("pcie-gen-degraded", Severity.WARNING, tags=("gpu", "pcie"),
            why="A busy GPU whose PCIe link trained below its generation (Gen3 instead of Gen5) moves "
                "data at a fraction of the speed. At idle a lower generation is normal power saving.",
            fix="check BIOS PCIe settings and risers/retimers; reseat the card; "
                "nvidia-smi -q -d PCIE under load shows the link")
def check_pcie_gen(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """Busy GPUs run their PCIe link at the highest generation both ends support."""
    idle_low: list[str] = []
    problems: list[Problem] = []
    for gpu in readable_gpus(facts, "PCIe link generation", lambda g: g.pcie_gen_current):
        gen, gen_max = gpu.pcie_gen_current, gpu.pcie_gen_max
        if not known(gen) or not known(gen_max) or gen >= gen_max:
            continue
        if not under_load(gpu):
            idle_low.append(f"GPU {gpu.index} idles at Gen{gen} (max Gen{gen_max})")
            continue
        width = f" x{gpu.pcie_width_current}" if known(gpu.pcie_width_current) else ""
        max_width = f" x{gpu.pcie_width_max}" if known(gpu.pcie_width_max) else ""
        problems.append(Problem(f"GPU {gpu.index} PCIe link runs Gen{gen}{width} under load, max "
                                f"Gen{gen_max}{max_width}", where=gpu_where(gpu)))
    if idle_low and not problems:
        raise NotApplicable("; ".join(idle_low) + ": power saving; the generation is judged under load")
    yield from problems


#: PCIe replays since driver load worth a warning (NVML only gives the running total).
PCIE_REPLAY_WARN = 100


@node_check("pcie-replay-errors", Severity.WARNING, tags=("gpu", "pcie"),
            why="PCIe replays are link-level retransmissions; many of them mean a marginal link "
                "(signal integrity, riser, seating) that slows transfers and can end in Xid 79.",
            fix="reseat the GPU or riser; if the counter keeps rising, move the GPU or RMA the riser/board")
def check_pcie_replays(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """PCIe replay counters are low."""
    for gpu in node_gpus(facts):
        replays = gpu.pcie_replay_count
        if known(replays) and replays >= PCIE_REPLAY_WARN:
            yield Problem(f"GPU {gpu.index} counted {replays} PCIe replays since the driver loaded "
                          f"(warning at {PCIE_REPLAY_WARN})", where=gpu_where(gpu))



# ----------------------------------------------------------------------------------- ECC, remapping


@node_check("ecc-disabled", Severity.WARNING, tags=("gpu", "ecc"),
            why="With ECC off, memory bit flips silently corrupt weights and gradients instead of "
                "being corrected or reported.",
            fix="sudo nvidia-smi -e 1   # then reboot (or reset the GPUs) to apply")
def check_ecc_disabled(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """ECC is enabled on GPUs that support it."""
    off = [gpu.index for gpu in node_gpus(facts) if known(gpu.ecc.mode_enabled) and not gpu.ecc.mode_enabled]
    if off:
        yield Problem(f"ECC is disabled on {gpu_list(off)}", where=gpu_list(off),
                      fix=" && ".join(f"sudo nvidia-smi -i {i} -e 1" for i in off) + "   # then reboot")


@node_check("ecc-uncorrectable-volatile", Severity.ERROR, tags=("gpu", "ecc"),
            why="An uncorrectable ECC error since the driver loaded means data on that GPU was "
                "corrupted; NVIDIA's guidance is to drain the node and reset the GPU before new work.",
            fix="drain the node, stop GPU processes, then sudo nvidia-smi -r -i N (or reboot)")
def check_ecc_volatile(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """No uncorrectable ECC errors since the driver loaded."""
    for gpu in node_gpus(facts):
        errors = gpu.ecc.volatile_uncorrected
        if known(errors) and errors > 0:
            yield Problem(f"GPU {gpu.index} has {errors} uncorrectable ECC error(s) since the driver loaded",
                          where=gpu_where(gpu),
                          fix=f"drain the node; stop processes on GPU {gpu.index}; "
                              f"sudo nvidia-smi -r -i {gpu.index}   # or reboot")


@node_check("ecc-aggregate-uncorrectable", Severity.WARNING, tags=("gpu", "ecc"),
            why="Uncorrectable ECC errors over the GPU's lifetime; row remapping usually repairs them, "
                "but a rising count points to failing memory.",
            fix="watch the count (nvidia-smi -q -d ECC,ROW_REMAPPER); RMA the GPU if it keeps rising")
def check_ecc_aggregate(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """No uncorrectable ECC errors in the GPU's lifetime record."""
    for gpu in node_gpus(facts):
        errors = gpu.ecc.aggregate_uncorrected
        if known(errors) and errors > 0:
            yield Problem(f"GPU {gpu.index} has recorded {errors} uncorrectable ECC error(s) in its "
                          "lifetime", where=gpu_where(gpu))


@node_check("row-remap-pending", Severity.ERROR, tags=("gpu", "ecc"),
            why="A row remapping is pending: the faulty memory row stays in use until the GPU is reset, "
                "and NVIDIA's guidance is to reset the GPU before running new work.",
            fix="stop GPU processes, then sudo nvidia-smi -r -i N (or reboot the node)")
def check_row_remap_pending(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """No row remapping waits for a GPU reset."""
    gpus = [gpu for gpu in node_gpus(facts) if _has_remapper(gpu)]
    if not gpus:
        raise NotApplicable("no GPU reports row remapping (it exists on Ampere and later)")
    for gpu in gpus:
        if gpu.remapped_rows.pending is True:  # a Maybe[bool]: Unavailable would be truthy
            yield Problem(f"GPU {gpu.index} has a row remapping pending: reset it to apply",
                          where=gpu_where(gpu),
                          fix=f"stop processes on GPU {gpu.index}; sudo nvidia-smi -r -i {gpu.index}")


@node_check("row-remap-failure", Severity.ERROR, tags=("gpu", "ecc"),
            why="Row remapping failed: the GPU ran out of spare rows or could not remap a fault; "
                "NVIDIA's guidance is to take the GPU out of service and RMA it.",
            fix="drain the node and open an RMA for the GPU (nvidia-bug-report.sh gathers the evidence)")
def check_row_remap_failure(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """No GPU has a row remapping failure."""
    for gpu in node_gpus(facts):
        failure = gpu.remapped_rows.failure
        if known(failure) and failure:
            yield Problem(f"GPU {gpu.index} reports a row remapping failure", where=gpu_where(gpu),
                          fix=f"drain the node; RMA GPU {gpu.index} (serial: nvidia-smi -q -i {gpu.index} "
                              "| grep Serial)")


@node_check("row-remap-history", Severity.INFO, tags=("gpu", "ecc"),
            why="Remapped rows are memory rows the GPU replaced with spares after errors; remapping "
                "worked, so no action is needed, but the count is worth tracking per GPU.",
            fix="none needed; nvidia-smi -q -d ROW_REMAPPER shows the spare-row histogram")
def check_row_remap_history(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """Rows remapped after memory errors (information)."""
    for gpu in node_gpus(facts):
        rows = gpu.remapped_rows
        unc = rows.uncorrectable if known(rows.uncorrectable) else 0
        cor = rows.correctable if known(rows.correctable) else 0
        if unc or cor:
            yield Problem(f"GPU {gpu.index} has {unc} row(s) remapped after uncorrectable errors and {cor} "
                          "after correctable errors; remapping succeeded", where=gpu_where(gpu))


def _has_remapper(gpu: GpuFacts) -> bool:
    """Ampere and later remap rows; older GPUs report the feature unavailable."""
    return known(gpu.remapped_rows.pending)


@node_check("retired-pages-pending", Severity.ERROR, tags=("gpu", "ecc"),
            why="Pre-Ampere GPUs retire bad memory pages; a pending retirement only takes effect after a "
                "GPU reset or reboot, until then the bad page stays in use.",
            fix="stop GPU processes, then sudo nvidia-smi -r -i N (or reboot)")
def check_retired_pages(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """No page retirement waits for a GPU reset (pre-Ampere GPUs)."""
    gpus = [gpu for gpu in node_gpus(facts) if known(gpu.retired_pages.pending)]
    if not gpus:
        raise NotApplicable("no GPU reports page retirement (Ampere and later use row remapping)")
    for gpu in gpus:
        pages = gpu.retired_pages
        if pages.pending is True:  # a Maybe[bool]: Unavailable would be truthy
            sbe = pages.single_bit if known(pages.single_bit) else "?"
            dbe = pages.double_bit if known(pages.double_bit) else "?"
            yield Problem(f"GPU {gpu.index} has a page retirement pending ({sbe} single-bit, {dbe} "
                          "double-bit pages retired)", where=gpu_where(gpu),
                          fix=f"stop processes on GPU {gpu.index}; sudo nvidia-smi -r -i {gpu.index}")


# ------------------------------------------------------------------------------ clocks and heat

#: Hardware clock cuts, with what usually causes each and what to do.
HW_SLOWDOWN_REASONS = {
    "hw_slowdown": ("hardware slowdown (thermal or power-brake signal)",
                    "check cooling and the power supply; nvidia-smi -q -d PERFORMANCE"),
    "hw_thermal_slowdown": ("hardware thermal slowdown: the GPU is too hot",
                            "check fans, airflow and inlet temperature; nvidia-smi -q -d TEMPERATURE"),
    "hw_power_brake_slowdown": ("hardware power brake: the system's power supply asked the GPU to slow",
                                "check PSUs and the chassis power budget (BMC/IPMI logs)"),
}


def _clocks(gpu: GpuFacts) -> str:
    if known(gpu.sm_clock_mhz) and known(gpu.sm_clock_max_mhz):
        return f" (SM clock {gpu.sm_clock_mhz}/{gpu.sm_clock_max_mhz} MHz)"
    return ""


@node_check("gpu-hw-slowdown", Severity.ERROR, tags=("gpu", "clocks"),
            why="The hardware is cutting the GPU's clocks (by half or more) to protect itself; every "
                "collective waits for the slowest GPU, so one slowed GPU slows the whole job.",
            fix="check cooling and power; nvidia-smi -q -d PERFORMANCE lists the active reasons")
def check_hw_slowdown(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """No GPU is slowed down by hardware (thermal, power brake)."""
    for gpu in readable_gpus(facts, "clock-event reasons", lambda g: g.clock_event_reasons):
        reasons = gpu.clock_event_reasons if known(gpu.clock_event_reasons) else []
        for reason in reasons:
            if reason in HW_SLOWDOWN_REASONS:
                meaning, fix = HW_SLOWDOWN_REASONS[reason]
                yield Problem(f"GPU {gpu.index} {meaning}{_clocks(gpu)}", where=gpu_where(gpu), fix=fix)


@node_check("gpu-throttled", Severity.WARNING, tags=("gpu", "clocks"),
            why="The driver lowers clocks when the GPU runs hot (software thermal slowdown) or hits its "
                "power limit under load; the job runs slower than the hardware can.",
            fix="improve cooling; check the power limit with nvidia-smi -q -d POWER")
def check_sw_throttle(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """No GPU is held back by software thermal slowdown, or by its power cap while busy."""
    for gpu in readable_gpus(facts, "clock-event reasons", lambda g: g.clock_event_reasons):
        reasons = gpu.clock_event_reasons if known(gpu.clock_event_reasons) else []
        if "sw_thermal_slowdown" in reasons:
            temp = f" at {gpu.temperature_c} C" if known(gpu.temperature_c) else ""
            yield Problem(f"GPU {gpu.index} is slowed by the driver for heat{temp}{_clocks(gpu)}",
                          where=gpu_where(gpu),
                          fix="check fans, airflow and inlet temperature; nvidia-smi -q -d TEMPERATURE")
        if "sw_power_cap" in reasons and under_load(gpu):
            power = ""
            if known(gpu.power_draw_w) and known(gpu.power_limit_w):
                power = f" ({gpu.power_draw_w:.0f} W of {gpu.power_limit_w:.0f} W)"
            yield Problem(f"GPU {gpu.index} is capped by its power limit{power}{_clocks(gpu)}",
                          where=gpu_where(gpu),
                          fix=f"nvidia-smi -q -d POWER -i {gpu.index}   # raise with sudo nvidia-smi -i "
                              f"{gpu.index} -pl <max W> if it was lowered")


@node_check("gpu-temperature", Severity.WARNING, tags=("gpu", "thermal"),
            why="A hot GPU is close to thermal slowdown; clocks will drop as soon as the job loads it.",
            fix="check fans, airflow and inlet temperature; nvidia-smi -q -d TEMPERATURE")
def check_temperature(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """GPU temperatures are below the warning threshold."""
    limit = ctx.thresholds.gpu_temp_warn_c
    for gpu in node_gpus(facts):
        temp = gpu.temperature_c
        if known(temp) and temp >= limit:
            yield Problem(f"GPU {gpu.index} is at {temp} C (warning at {limit} C)", where=gpu_where(gpu))


# ------------------------------------------------------------------------------------ modes, usage


@node_check("persistence-mode-off", Severity.WARNING, tags=("gpu", "config"),
            why="Without persistence mode the driver tears the GPUs down when no process uses them, so "
                "every launch pays seconds of re-initialisation and NVML readings come and go.",
            fix="sudo nvidia-smi -pm 1   # or: sudo systemctl enable --now nvidia-persistenced")
def check_persistence_mode(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """Persistence mode is on."""
    off = [gpu.index for gpu in node_gpus(facts)
           if known(gpu.persistence_mode) and not gpu.persistence_mode]
    if off:
        yield Problem(f"persistence mode is off on {gpu_list(off)}", where=gpu_list(off))


@node_check("gpu-mig-enabled", Severity.WARNING, tags=("gpu", "config"),
            why="With MIG on, CUDA sees GPU slices instead of GPUs: DeepSpeed's one-rank-per-GPU layout, "
                "P2P and NCCL across slices do not work as on whole GPUs.",
            fix="sudo nvidia-smi -i N -mig 0   # then reset the GPU or reboot")
def check_mig(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """MIG is off."""
    on = [gpu.index for gpu in node_gpus(facts) if known(gpu.mig_enabled) and gpu.mig_enabled]
    if on:
        yield Problem(f"MIG is enabled on {gpu_list(on)}", where=gpu_list(on),
                      fix=" && ".join(f"sudo nvidia-smi -i {i} -mig 0" for i in on) +
                          "   # then reset the GPUs or reboot")


@node_check("gpu-processes-present", Severity.WARNING, tags=("gpu", "usage"),
            why="Another process already holds GPU memory and compute: the job gets less memory (OOM) "
                "and shares the GPU's time.",
            fix="nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv; stop them")
def check_processes(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """No other compute processes run on the GPUs."""
    for gpu in node_gpus(facts):
        count = gpu.compute_processes
        if known(count) and count > 0:
            used = f" using {_gib(gpu.memory_used_bytes)}" if known(gpu.memory_used_bytes) else ""
            yield Problem(f"GPU {gpu.index} already runs {count} compute process(es){used}",
                          where=gpu_where(gpu),
                          fix=f"nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv "
                              f"-i {gpu.index}   # then stop those processes")


@node_check("gpu-compute-mode-prohibited", Severity.ERROR, tags=("gpu", "config"),
            why="In the Prohibited compute mode no process may create a CUDA context: torch sees the GPU "
                "but every CUDA call fails.",
            fix="sudo nvidia-smi -i N -c DEFAULT")
def check_compute_mode(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """No GPU forbids compute work."""
    for gpu in node_gpus(facts):
        mode = gpu.compute_mode
        if known(mode) and mode.replace("_", "").lower() == "prohibited":
            yield Problem(f"GPU {gpu.index} is in compute mode Prohibited", where=gpu_where(gpu),
                          fix=f"sudo nvidia-smi -i {gpu.index} -c DEFAULT")


@node_check("bf16-unsupported", Severity.INFO, tags=("gpu", "precision"),
            why="bf16 needs compute capability 8.0 (Ampere) or later; DeepSpeed stops with 'Type bf16 "
                "is not supported on your device.'",
            fix='use fp16 in the DeepSpeed config ("fp16": {"enabled": true}) instead of bf16')
def check_bf16(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """GPUs support bf16 (compute capability 8.0 or later)."""
    old: dict[str, list[int]] = {}
    for gpu in readable_gpus(facts, "compute capability", lambda g: g.compute_capability):
        capability = gpu.compute_capability
        if known(capability) and _capability(capability) < (8, 0):
            old.setdefault(f"{gpu.name} (compute capability {capability})", []).append(gpu.index)
    for model, indices in old.items():
        yield Problem(f"{gpu_list(indices)}: {model} cannot run bf16", where=gpu_list(indices))


def _capability(text: str) -> tuple[int, int]:
    major, _, minor = text.partition(".")
    try:
        return int(major), int(minor or 0)
    except ValueError:
        return (99, 0)  # unreadable: do not claim the GPU is too old


# ---------------------------------------------------------------------------------------------- XID

#: NVIDIA's XID catalog, the codes seen on training nodes: (meaning, what to do, drain the node?).
XID_MEANINGS: dict[int, tuple[str, str, bool]] = {
    13: ("graphics engine exception, usually an application fault (illegal memory access)",
         "check the application; if it repeats across jobs, reset the GPU", False),
    31: ("GPU memory page fault, usually an application bug (illegal address)",
         "check the application; if it repeats across jobs, reset the GPU", False),
    32: ("invalid or corrupted push buffer stream (driver or PCIe corruption)",
         "reset the GPU; check PCIe seating if it repeats", False),
    38: ("driver firmware error", "update the driver; reset the GPU", False),
    43: ("GPU stopped processing: an application hit a fatal error", "check the application", False),
    45: ("preemptive cleanup after an earlier error (processes were killed)",
         "look for the earlier Xid", False),
    48: ("double-bit ECC error: uncorrectable memory error",
         "drain the node; reset the GPU (sudo nvidia-smi -r -i N)", True),
    61: ("internal micro-controller breakpoint/warning", "reset the GPU if it repeats", False),
    62: ("internal micro-controller halt", "drain the node; reset the GPU or reboot", True),
    63: ("ECC page retirement or row remapping recorded",
         "reset the GPU when idle so the remapping takes effect", False),
    64: ("ECC page retirement or row remapping recording failure",
         "drain the node; reset the GPU; RMA if it repeats", True),
    68: ("video decoder (NVDEC) exception", "reset the GPU if it repeats", False),
    69: ("graphics engine class error", "check the application; reset the GPU if it repeats", False),
    74: ("NVLink error", "nvidia-smi nvlink -e -i N; reset the GPU; reseat or RMA if it repeats", True),
    79: ("GPU has fallen off the bus", "drain and reboot the node; check PCIe seating, power and cooling",
         True),
    92: ("high single-bit ECC error rate", "watch ECC counters; RMA if the rate stays high", False),
    94: ("contained ECC error: the affected application was stopped, the GPU is fine",
         "restart the application", False),
    95: ("uncontained ECC error: every application on the GPU was affected",
         "drain the node; reset the GPU (sudo nvidia-smi -r -i N)", True),
    119: ("GSP RPC timeout: the GPU's firmware stopped answering", "drain the node; reset the GPU or reboot",
          True),
    120: ("GSP firmware error", "drain the node; reset the GPU or reboot", True),
    121: ("C2C (chip-to-chip) link error", "reset the GPU; RMA if it repeats", False),
    140: ("unrecovered ECC error", "drain the node; reset the GPU", True),
    154: ("GPU recovery action required by the driver (reset, reboot or drain)",
          "nvidia-smi -q | grep -A2 'Recovery Action'; do what it says", True),
}


def _xid_groups(facts: NodeFacts, critical: bool) -> Iterator[Problem]:
    nvidia = require(facts.nvidia, "NVIDIA facts")
    events = require(nvidia.xid_events, "kernel log XID events")
    gpus = nvidia.gpus if known(nvidia.gpus) else []
    by_bus = {_bus_key(gpu.bus_id): gpu for gpu in gpus}
    counts: dict[tuple[str, int], int] = {}
    for event in events:
        known_meaning = XID_MEANINGS.get(event.code)
        if (known_meaning is not None and known_meaning[2]) == critical:
            key = (event.bus_id, event.code)
            counts[key] = counts.get(key, 0) + 1
    for (bus_id, code), count in counts.items():
        meaning, action, _ = XID_MEANINGS.get(code, ("not in clusterkit's catalog",
                                                      "look it up in NVIDIA's XID catalog", False))
        gpu = by_bus.get(_bus_key(bus_id))
        where = gpu_where(gpu) if gpu else f"PCI {short_bus_id(bus_id)}"
        times = f" x{count}" if count > 1 else ""
        yield Problem(f"Xid {code}{times} on {where}: {meaning}", where=where,
                      fix=action.replace("-i N", f"-i {gpu.index}") if gpu else action)


def _bus_key(bus_id: str) -> str:
    """Bus ids from NVML (``00000000:3B:00.0``) and the kernel log (``0000:3b:00``) compare equal."""
    text = bus_id.lower().removeprefix("pci:")
    parts = text.split(":")
    if len(parts) < 2:
        return text
    device = parts[-1].split(".")[0]
    try:
        return f"{int(parts[-3] if len(parts) >= 3 else '0', 16)}:{int(parts[-2], 16)}:{int(device, 16)}"
    except ValueError:
        return text


@node_check("xid-critical", Severity.ERROR, tags=("gpu", "xid"),
            why="These XIDs (ECC, fallen off the bus, NVLink, firmware) mean the GPU's state cannot be "
                "trusted until it is reset; NVIDIA's guidance is to drain the node first.",
            fix="drain the node and reset the GPU or reboot; see the fix on each line")
def check_xid_critical(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """No XID in the kernel log says a GPU needs a reset or RMA."""
    yield from _xid_groups(facts, critical=True)


@node_check("xid-events", Severity.WARNING, tags=("gpu", "xid"),
            why="XIDs are the driver's error reports; these are usually application faults, but a "
                "repeating one points at the GPU.",
            fix="read the meaning on each line; sudo dmesg -T | grep -i xid shows them in context")
def check_xid_events(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """No other XID errors in the kernel log."""
    yield from _xid_groups(facts, critical=False)
