"""collect_nvidia end to end: recorded GPUs (real H100 and synthetic machines) give truthful facts,
a hung driver is reported within the deadline, and a machine without NVML answers quickly."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from clusterkit.core.facts_codec import from_jsonable
from clusterkit.node.collect.gpu import LiveWorld, ReplayWorld, collect_nvidia
from clusterkit.node.collect.node import CollectOptions, collect_node
from clusterkit.node.collect.nvml import NvmlApi, NvmlNotFoundError
from clusterkit.node.collect.nvml_replay import REPLAY_ENV, ReplayNvml
from clusterkit.node.facts import GpuFacts, Maybe, NvidiaFacts, TopologyFacts, Unavailable, to_jsonable

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
H100 = FIXTURES / "h100-x1" / "nvml-readings.json"
NVLINK8 = FIXTURES / "synthetic-8xh100-nvlink" / "nvml-readings.json"
PCIE2 = FIXTURES / "synthetic-2gpu-pcie-sys" / "nvml-readings.json"
DOWNGRADED = FIXTURES / "synthetic-pcie-downgraded" / "nvml-readings.json"
REMAP = FIXTURES / "synthetic-row-remap-pending" / "nvml-readings.json"
ALL_RECORDINGS = [H100, NVLINK8, PCIE2, DOWNGRADED, REMAP]

OPTIONS = CollectOptions(nvml_timeout_s=2.0)


def replayed(path: Path) -> NvidiaFacts:
    return collect_nvidia(OPTIONS, ReplayWorld(str(path)))


def gpu_list(facts: NvidiaFacts) -> list[GpuFacts]:
    assert isinstance(facts.gpus, list), facts.gpus
    return facts.gpus


def topology_of(facts: NvidiaFacts) -> TopologyFacts:
    assert isinstance(facts.topology, TopologyFacts), facts.topology
    return facts.topology


def reason(value: Maybe[object]) -> str:
    assert isinstance(value, Unavailable), value
    return value.reason


# -------------------------------------------------------------------------- the real H100 recording


def test_h100_driver_and_cuda_come_from_nvml() -> None:
    facts = replayed(H100)
    assert facts.driver_version == "580.159.04"
    assert facts.cuda_driver_version == "13.0"
    assert facts.kernel_module == (
        "NVIDIA UNIX Open Kernel Module for x86_64 580.159.04 Release Build (nixbld@)")


def test_h100_is_one_gpu_with_its_identity_and_compute_capability() -> None:
    (gpu,) = gpu_list(replayed(H100))
    assert (gpu.index, gpu.name) == (0, "NVIDIA H100 80GB HBM3")
    assert gpu.uuid == "GPU-944ba4d1-ba97-eb4c-5067-8840a9b23fdb"
    assert gpu.bus_id == "00000000:00:06.0"
    assert gpu.compute_capability == "9.0"


def test_h100_link_modes_and_clocks_are_the_recorded_truth() -> None:
    (gpu,) = gpu_list(replayed(H100))
    assert (gpu.pcie_gen_current, gpu.pcie_gen_max) == (5, 5)
    assert (gpu.pcie_width_current, gpu.pcie_width_max) == (16, 16)
    assert gpu.pcie_replay_count == 0
    assert gpu.persistence_mode is True
    assert gpu.mig_enabled is False
    assert gpu.compute_mode == "default"
    assert gpu.performance_state == 0
    assert gpu.clock_event_reasons == ["gpu_idle"]
    assert (gpu.sm_clock_mhz, gpu.sm_clock_max_mhz) == (345, 1980)
    assert (gpu.mem_clock_mhz, gpu.mem_clock_max_mhz) == (2619, 2619)
    assert (gpu.power_draw_w, gpu.power_limit_w) == (75.259, 700.0)
    assert (gpu.memory_total_bytes, gpu.memory_used_bytes) == (85520809984, 503316480)
    assert (gpu.temperature_c, gpu.compute_processes) == (47, 0)


def test_h100_memory_health_remapped_rows_but_no_page_retirement() -> None:
    (gpu,) = gpu_list(replayed(H100))
    rows = gpu.remapped_rows
    assert (rows.correctable, rows.uncorrectable, rows.pending, rows.failure) == (0, 3, False, False)
    assert reason(gpu.retired_pages.single_bit) == "NVMLError_NotSupported: Not Supported"
    assert reason(gpu.retired_pages.double_bit) == "NVMLError_NotSupported: Not Supported"
    assert reason(gpu.retired_pages.pending) == "NVMLError_NotSupported: Not Supported"
    assert (gpu.ecc.volatile_corrected, gpu.ecc.volatile_uncorrected) == (0, 0)
    assert "not in the recorded readings" in reason(gpu.ecc.mode_enabled)


def test_h100_has_no_nvlink_and_no_numa_node_from_nvml() -> None:
    (gpu,) = gpu_list(replayed(H100))
    assert reason(gpu.nvlinks) == "NVMLError_NotSupported: Not Supported"
    assert reason(gpu.numa_node) == "NVMLError_NotSupported: Not Supported"


def test_h100_topology_is_one_gpu_and_missing_recordings_say_so() -> None:
    facts = replayed(H100)
    topology = topology_of(facts)
    assert (topology.devices, topology.matrix, topology.p2p_read, topology.p2p_nvlink) == (
        ["GPU0"], [["X"]], [["X"]], [["X"]])
    assert "not recorded" in reason(topology.p2p_write)
    assert "not recorded" in reason(facts.xid_events)
    assert facts.device_files == ["/dev/nvidia0", "/dev/nvidiactl"]


# ------------------------------------------------------------------------------ synthetic machines


def test_eight_nvlinked_h100s_have_18_active_v4_links_each_and_two_numa_nodes() -> None:
    facts = replayed(NVLINK8)
    gpus = gpu_list(facts)
    assert [gpu.bus_id[9:11] for gpu in gpus] == ["18", "2A", "3A", "5D", "9A", "AB", "BA", "DB"]
    assert [gpu.numa_node for gpu in gpus] == [0, 0, 0, 0, 1, 1, 1, 1]
    for gpu in gpus:
        assert isinstance(gpu.nvlinks, list)
        assert [link.link for link in gpu.nvlinks] == list(range(18))
        assert all(link.active and link.version == 4 for link in gpu.nvlinks)
        assert all(link.crc_errors == link.replay_errors == link.recovery_errors == 0 for link in gpu.nvlinks)
        assert {link.remote_bus_id for link in gpu.nvlinks} == {f"00000000:0{n}:00.0" for n in (5, 6, 7, 8)}


def test_eight_nvlinked_h100s_topology_pairs_each_gpu_with_its_nic() -> None:
    topology = topology_of(replayed(NVLINK8))
    assert len(topology.devices) == 16
    assert topology.nic_names["NIC7"] == "mlx5_7"
    assert topology.matrix[2][10] == "PXB"  # GPU2 - NIC2
    assert topology.matrix[2][1] == "NV18"
    for matrix in (topology.p2p_read, topology.p2p_write, topology.p2p_nvlink):
        assert isinstance(matrix, list)
        assert all(cell == ("X" if i == j else "OK")
                   for i, row in enumerate(matrix) for j, cell in enumerate(row))


def test_two_pcie_gpus_across_sockets_have_no_nvlink_and_no_p2p() -> None:
    facts = replayed(PCIE2)
    gpus = gpu_list(facts)
    assert [gpu.name for gpu in gpus] == ["NVIDIA L40S", "NVIDIA L40S"]
    assert [gpu.compute_capability for gpu in gpus] == ["8.9", "8.9"]
    assert all(reason(gpu.nvlinks) == "NVMLError_NotSupported: Not Supported" for gpu in gpus)
    assert "NotSupported" in reason(gpus[0].mig_enabled)
    # Idle Ada GPUs drop their link to Gen1 to save power: P8, not a fault.
    assert [(gpu.performance_state, gpu.pcie_gen_current, gpu.pcie_gen_max)
            for gpu in gpus] == [(8, 1, 4)] * 2
    topology = topology_of(facts)
    assert topology.matrix == [["X", "SYS"], ["SYS", "X"]]
    assert topology.p2p_read == [["X", "CNS"], ["CNS", "X"]]
    assert topology.p2p_nvlink == [["X", "NS"], ["NS", "X"]]


def test_downgraded_link_under_load_is_visible_next_to_a_healthy_one() -> None:
    healthy, degraded = gpu_list(replayed(DOWNGRADED))
    assert (healthy.pcie_gen_current, healthy.pcie_width_current, healthy.pcie_replay_count) == (5, 16, 0)
    assert (degraded.pcie_gen_current, degraded.pcie_gen_max) == (3, 5)
    assert (degraded.pcie_width_current, degraded.pcie_width_max) == (8, 16)
    assert degraded.pcie_replay_count == 1423
    assert (degraded.performance_state, degraded.utilization_gpu_pct) == (0, 97)
    assert degraded.clock_event_reasons == []
    assert degraded.compute_processes == 1


def test_row_remapping_pending_on_one_gpu_failed_on_another_and_a_lost_gpu() -> None:
    facts = replayed(REMAP)
    pending, failed, lost = gpu_list(facts)
    assert (pending.remapped_rows.pending, pending.remapped_rows.failure) == (True, False)
    assert (pending.ecc.volatile_uncorrected, pending.ecc.aggregate_uncorrected) == (1, 1)
    assert (failed.remapped_rows.pending, failed.remapped_rows.failure) == (False, True)
    assert failed.remapped_rows.uncorrectable == 512
    assert lost.index == 2
    assert lost.name == "unavailable: NVMLError_GpuIsLost: GPU is lost"
    assert reason(lost.temperature_c) == "NVMLError_GpuIsLost: GPU is lost"
    assert reason(lost.nvlinks) == "NVMLError_GpuIsLost: GPU is lost"
    assert facts.device_files == ["/dev/nvidia0", "/dev/nvidia1", "/dev/nvidia2", "/dev/nvidiactl"]


def test_xid_events_of_the_remapping_machine_name_codes_and_gpus() -> None:
    events = replayed(REMAP).xid_events
    assert isinstance(events, list)
    assert [(event.code, event.bus_id[9:11]) for event in events] == [
        (48, "1B"), (63, "1B"), (64, "3B"), (79, "86"), (79, "86")]


@pytest.mark.parametrize("path", ALL_RECORDINGS, ids=lambda p: p.parent.name)
def test_facts_survive_the_json_round_trip(path: Path) -> None:
    facts = replayed(path)
    assert from_jsonable(NvidiaFacts, to_jsonable(facts)) == facts


# ------------------------------------------------------------------------------ a hung driver


class HangsOnPowerUsage(ReplayNvml):
    """The edge of a wedged driver: one NVML call never comes back."""

    def __init__(self, source: str, hang_s: float) -> None:
        super().__init__(source)
        self.hang_s = hang_s
        self.calls_after_hang = 0

    def power_usage_mw(self, index: int) -> int:
        time.sleep(self.hang_s)
        return super().power_usage_mw(index)

    def remapped_rows(self, index: int) -> tuple[int, int, int, int]:
        self.calls_after_hang += 1
        return super().remapped_rows(index)


class WorldWithNvml(ReplayWorld):
    def __init__(self, path: Path, api: NvmlApi) -> None:
        super().__init__(str(path))
        self.api = api
        self.smi_calls: list[list[str]] = []

    def nvml(self) -> NvmlApi:
        return self.api

    def nvidia_smi(self, args: list[str], timeout_s: float) -> Maybe[str]:
        self.smi_calls.append(args)
        return super().nvidia_smi(args, timeout_s)


def test_hung_nvml_call_is_reported_within_the_deadline_and_nvml_is_left_alone() -> None:
    api = HangsOnPowerUsage(str(NVLINK8), hang_s=5.0)
    started = time.monotonic()
    facts = collect_nvidia(CollectOptions(nvml_timeout_s=0.2), WorldWithNvml(NVLINK8, api))
    assert time.monotonic() - started < 2.0
    first, *others = gpu_list(facts)
    assert first.name == "NVIDIA H100 80GB HBM3"  # read before the hang
    assert "nvmlDeviceGetPowerUsage(0) did not answer within 0.2s" in reason(first.power_draw_w)
    assert "NVML stopped answering" in reason(first.remapped_rows.pending)
    assert all("NVML stopped answering" in reason(gpu.temperature_c) for gpu in others)
    assert api.calls_after_hang == 0
    assert isinstance(facts.topology, TopologyFacts)  # nvidia-smi ran beside NVML


class HangsInInit(ReplayNvml):
    def init(self) -> None:
        time.sleep(5.0)


def test_nvml_that_hangs_at_init_does_not_also_wait_on_nvidia_smi_q() -> None:
    world = WorldWithNvml(DOWNGRADED, HangsInInit(str(DOWNGRADED)))
    started = time.monotonic()
    facts = collect_nvidia(CollectOptions(nvml_timeout_s=0.2), world)
    assert time.monotonic() - started < 2.0
    assert reason(facts.gpus).startswith("NVML did not start: nvmlInit did not answer within 0.2s")
    assert ["-q", "-x"] not in world.smi_calls


class SlowButAnswering(ReplayNvml):
    """A driver that answers every call, slowly: no single call times out."""

    def temperature_c(self, index: int) -> int:
        time.sleep(0.3)
        return super().temperature_c(index)


def test_a_slow_driver_cannot_stretch_the_pass_beyond_the_section_deadline() -> None:
    started = time.monotonic()
    facts = collect_nvidia(CollectOptions(section_timeout_s=2.0, nvml_timeout_s=1.0),
                           WorldWithNvml(NVLINK8, SlowButAnswering(str(NVLINK8))))
    assert time.monotonic() - started < 2.0
    gpus = gpu_list(facts)
    assert gpus[0].temperature_c == 33
    assert "NVML pass ran out of time" in reason(gpus[-1].temperature_c)


class SlowNvidiaSmi(ReplayWorld):
    """An nvidia-smi that takes longer than the whole section may."""

    def nvidia_smi(self, args: list[str], timeout_s: float) -> Maybe[str]:
        time.sleep(3.0)
        return super().nvidia_smi(args, timeout_s)


def test_the_section_deadline_bounds_slow_nvidia_smi_and_keeps_the_nvml_facts() -> None:
    started = time.monotonic()
    facts = collect_nvidia(CollectOptions(section_timeout_s=2.0, nvml_timeout_s=1.0),
                           SlowNvidiaSmi(str(NVLINK8)))
    assert time.monotonic() - started < 2.0
    assert "did not finish" in reason(facts.topology)
    assert len(gpu_list(facts)) == 8


# --------------------------------------------------------------------- no NVML: fall back, or say why


class BindingsMissing(ReplayNvml):
    def init(self) -> None:
        raise NvmlNotFoundError("NVML not found: the pynvml module (nvidia-ml-py) cannot be imported")


def test_without_nvml_bindings_gpus_come_from_nvidia_smi_q_x() -> None:
    world = WorldWithNvml(DOWNGRADED, BindingsMissing(str(DOWNGRADED)))
    facts = collect_nvidia(OPTIONS, world)
    assert (facts.driver_version, facts.cuda_driver_version) == ("580.159.04", "13.0")
    healthy, degraded = gpu_list(facts)
    assert (degraded.pcie_gen_current, degraded.pcie_width_current) == (3, 8)
    assert degraded.pcie_replay_count == 1423
    assert [gpu.compute_capability for gpu in (healthy, degraded)] == ["9.0", "9.0"]  # from --query-gpu
    assert "NVLink" in reason(degraded.nvlinks)


def test_without_nvml_or_nvidia_smi_every_reason_is_given() -> None:
    world = WorldWithNvml(NVLINK8, BindingsMissing(str(NVLINK8)))  # no -q -x recorded there
    facts = collect_nvidia(OPTIONS, world)
    text = reason(facts.gpus)
    assert text.startswith("NVML not found: the pynvml module")
    assert "fallback nvidia-smi -q -x: replay: nvidia-smi -q -x not recorded" in text
    assert facts.driver_version == "580.159.04"  # from /proc/driver/nvidia/version


@pytest.mark.skipif(Path("/dev/nvidiactl").exists(), reason="this machine has an NVIDIA driver")
def test_this_machine_without_nvml_answers_quickly_with_reasons(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REPLAY_ENV, raising=False)
    started = time.monotonic()
    facts = collect_nvidia(CollectOptions(), LiveWorld())
    assert time.monotonic() - started < 5.0
    assert reason(facts.gpus).startswith("no NVIDIA driver here")  # nothing to ask NVML or nvidia-smi
    assert isinstance(facts.topology, Unavailable)
    assert isinstance(facts.xid_events, Unavailable)
    assert isinstance(facts.kernel_module, Unavailable)
    assert facts.device_files == []


def test_numa_node_of_a_pci_device_is_read_from_sysfs() -> None:
    devices = sorted(Path("/sys/bus/pci/devices").glob("*:*:*.*"))
    if not devices:
        pytest.skip("no PCI devices in sysfs here")
    domain, bus, rest = devices[0].name.split(":")
    nvml_form = f"{int(domain, 16):08X}:{bus.upper()}:{rest.upper()}"
    node = LiveWorld().sysfs_numa_node(nvml_form)
    assert isinstance(node, int) or "numa_node" in reason(node)
    assert "No such file" in reason(LiveWorld().sysfs_numa_node("0000FFFF:FF:1F.7"))


# -------------------------------------------------------------------- CLUSTERKIT_NVML_REPLAY


def test_replay_variable_gives_collect_nvidia_the_recorded_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REPLAY_ENV, str(NVLINK8))
    facts = collect_nvidia(OPTIONS)
    assert len(gpu_list(facts)) == 8
    assert topology_of(facts).nic_names["NIC0"] == "mlx5_0"


def test_replay_variable_reaches_through_collect_node(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REPLAY_ENV, str(H100))
    node = collect_node(CollectOptions(sections=["nvidia"]))
    assert isinstance(node.nvidia, NvidiaFacts)
    assert gpu_list(node.nvidia)[0].bus_id == "00000000:00:06.0"


def test_replay_of_a_missing_recording_says_which_file(tmp_path: Path) -> None:
    facts = collect_nvidia(OPTIONS, ReplayWorld(str(tmp_path / "absent.json")))
    text = reason(facts.gpus)
    assert text.startswith("NVML did not start: cannot replay NVML readings")
    assert "absent.json" in text
