"""nvidia-smi parsers read the real H100 outputs truthfully and never raise on malformed text."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from clusterkit.node.collect.nvidia_smi import (
    KernelModule,
    P2pMatrix,
    SmiQuery,
    parse_compute_cap_csv,
    parse_proc_driver_version,
    parse_smi_query_xml,
    parse_topo_matrix,
    parse_topo_p2p,
    strip_ansi,
)
from clusterkit.node.facts import TopologyFacts, Unavailable

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
H100 = FIXTURES / "h100-x1"
NVLINK8 = FIXTURES / "synthetic-8xh100-nvlink"
PCIE2 = FIXTURES / "synthetic-2gpu-pcie-sys"
DOWNGRADED = FIXTURES / "synthetic-pcie-downgraded"


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def h100_query() -> SmiQuery:
    query = parse_smi_query_xml(read(H100 / "nvidia-smi-q-x.xml"))
    assert isinstance(query, SmiQuery)
    return query


# ------------------------------------------------------------------------------ -q -x on the H100


def test_xml_gives_driver_and_the_cuda_version_it_supports() -> None:
    query = h100_query()
    assert query.driver_version == "580.159.04"
    assert query.cuda_version == "13.0"


def test_xml_lists_the_one_h100_with_its_identity() -> None:
    (gpu,) = h100_query().gpus
    assert gpu.index == 0
    assert gpu.name == "NVIDIA H100 80GB HBM3"
    assert gpu.uuid == "GPU-944ba4d1-ba97-eb4c-5067-8840a9b23fdb"
    assert gpu.bus_id == "00000000:00:06.0"


def test_xml_pcie_link_is_gen5_x16_at_its_maximum() -> None:
    (gpu,) = h100_query().gpus
    assert (gpu.pcie_gen_current, gpu.pcie_gen_max) == (5, 5)
    assert (gpu.pcie_width_current, gpu.pcie_width_max) == (16, 16)
    assert gpu.pcie_replay_count == 0


def test_xml_modes_persistence_on_ecc_on_mig_off_default_compute() -> None:
    (gpu,) = h100_query().gpus
    assert gpu.persistence_mode is True
    assert gpu.ecc.mode_enabled is True
    assert gpu.mig_enabled is False
    assert gpu.compute_mode == "default"
    assert gpu.performance_state == 0


def test_xml_ecc_counts_sum_sram_and_dram_so_aggregate_uncorrectable_is_2() -> None:
    (gpu,) = h100_query().gpus
    assert gpu.ecc.volatile_corrected == 0
    assert gpu.ecc.volatile_uncorrected == 0
    assert gpu.ecc.aggregate_corrected == 1
    assert gpu.ecc.aggregate_uncorrected == 2


def test_xml_remapped_rows_3_uncorrectable_not_pending_and_retired_pages_na() -> None:
    (gpu,) = h100_query().gpus
    rows = gpu.remapped_rows
    assert (rows.correctable, rows.uncorrectable, rows.pending, rows.failure) == (0, 3, False, False)
    assert isinstance(gpu.retired_pages.single_bit, Unavailable)
    assert isinstance(gpu.retired_pages.double_bit, Unavailable)
    assert isinstance(gpu.retired_pages.pending, Unavailable)
    assert "N/A" in gpu.retired_pages.pending.reason


def test_xml_memory_power_clocks_and_reasons() -> None:
    (gpu,) = h100_query().gpus
    assert gpu.memory_total_bytes == 81559 * 1024 * 1024
    assert gpu.memory_used_bytes == 0
    assert gpu.temperature_c == 47
    assert gpu.power_draw_w == 75.34
    assert gpu.power_limit_w == 700.0
    assert (gpu.sm_clock_mhz, gpu.sm_clock_max_mhz) == (345, 1980)
    assert (gpu.mem_clock_mhz, gpu.mem_clock_max_mhz) == (2619, 2619)
    assert gpu.clock_event_reasons == ["gpu_idle"]
    assert (gpu.utilization_gpu_pct, gpu.utilization_memory_pct) == (0, 0)
    assert gpu.compute_processes == 0


def test_xml_says_why_nvlink_numa_and_compute_capability_are_missing() -> None:
    (gpu,) = h100_query().gpus
    assert isinstance(gpu.nvlinks, Unavailable)
    assert isinstance(gpu.numa_node, Unavailable)
    assert isinstance(gpu.compute_capability, Unavailable)
    assert "compute_cap" in gpu.compute_capability.reason


def test_xml_with_two_gpus_shows_the_downgraded_link_and_its_replays() -> None:
    query = parse_smi_query_xml(read(DOWNGRADED / "nvidia-smi-q-x.xml"))
    assert isinstance(query, SmiQuery)
    healthy, degraded = query.gpus
    assert healthy.bus_id == "00000000:18:00.0"
    assert (healthy.pcie_gen_current, healthy.pcie_width_current) == (5, 16)
    assert (degraded.index, degraded.bus_id) == (1, "00000000:2A:00.0")
    assert (degraded.pcie_gen_current, degraded.pcie_gen_max) == (3, 5)
    assert (degraded.pcie_width_current, degraded.pcie_width_max) == (8, 16)
    assert degraded.pcie_replay_count == 1423
    assert degraded.performance_state == 0
    assert degraded.utilization_gpu_pct == 97
    assert degraded.clock_event_reasons == []
    assert degraded.compute_processes == 1


def test_xml_of_older_drivers_uses_throttle_reasons_and_bit_totals() -> None:
    text = """<?xml version="1.0" ?><nvidia_smi_log><driver_version>470.82.01</driver_version>
    <cuda_version>11.4</cuda_version><gpu id="00000000:3B:00.0">
    <product_name>Tesla V100-SXM2-32GB</product_name>
    <clocks_throttle_reasons><clocks_throttle_reason_gpu_idle>Not Active</clocks_throttle_reason_gpu_idle>
    <clocks_throttle_reason_hw_slowdown>Active</clocks_throttle_reason_hw_slowdown>
    <clocks_throttle_reason_sw_power_cap>Active</clocks_throttle_reason_sw_power_cap></clocks_throttle_reasons>
    <ecc_errors><volatile><single_bit><total>4</total></single_bit><double_bit><total>1</total></double_bit>
    </volatile></ecc_errors><power_readings><power_draw>250.12 W</power_draw>
    <enforced_power_limit>300.00 W</enforced_power_limit></power_readings></gpu></nvidia_smi_log>"""
    query = parse_smi_query_xml(text)
    assert isinstance(query, SmiQuery)
    (gpu,) = query.gpus
    assert gpu.bus_id == "00000000:3B:00.0"
    assert gpu.clock_event_reasons == ["sw_power_cap", "hw_slowdown"]
    assert (gpu.ecc.volatile_corrected, gpu.ecc.volatile_uncorrected) == (4, 1)
    assert isinstance(gpu.ecc.aggregate_uncorrected, Unavailable)
    assert (gpu.power_draw_w, gpu.power_limit_w) == (250.12, 300.0)


def test_xml_that_is_not_xml_or_not_nvidia_smi_is_unavailable() -> None:
    failed = "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."
    assert isinstance(parse_smi_query_xml(failed), Unavailable)
    assert isinstance(parse_smi_query_xml("<html></html>"), Unavailable)


# ------------------------------------------------------------------------------------ topo -m


def test_topo_h100_single_gpu_despite_ansi_underline_and_tabs() -> None:
    topology = parse_topo_matrix(read(H100 / "nvidia-smi-topo-m.txt"))
    assert isinstance(topology, TopologyFacts)
    assert topology.devices == ["GPU0"]
    assert topology.matrix == [["X"]]
    assert topology.cpu_affinity == {"GPU0": "0-15"}
    assert topology.numa_affinity == {"GPU0": "0"}
    assert topology.nic_names == {}


def test_topo_8_gpus_nvlinked_with_a_nic_under_each_gpu_and_two_sockets() -> None:
    topology = parse_topo_matrix(read(NVLINK8 / "nvidia-smi-topo-m.txt"))
    assert isinstance(topology, TopologyFacts)
    gpus = [f"GPU{i}" for i in range(8)]
    nics = [f"NIC{i}" for i in range(8)]
    assert topology.devices == gpus + nics
    assert topology.nic_names == {f"NIC{i}": f"mlx5_{i}" for i in range(8)}
    cell = {(a, b): topology.matrix[i][j] for i, a in enumerate(topology.devices)
            for j, b in enumerate(topology.devices)}
    assert all(cell[a, b] == ("X" if a == b else "NV18") for a in gpus for b in gpus)
    assert cell["GPU3", "NIC3"] == "PXB"
    assert cell["GPU0", "NIC2"] == "NODE"
    assert cell["GPU1", "NIC6"] == "SYS"
    assert cell["NIC5", "NIC6"] == "NODE"
    assert topology.numa_affinity == {f"GPU{i}": "0" if i < 4 else "1" for i in range(8)}
    assert topology.cpu_affinity["GPU7"] == "56-111,168-223"
    assert "NIC0" not in topology.cpu_affinity


def test_topo_two_pcie_gpus_on_different_sockets_are_sys() -> None:
    topology = parse_topo_matrix(read(PCIE2 / "nvidia-smi-topo-m.txt"))
    assert isinstance(topology, TopologyFacts)
    assert topology.devices == ["GPU0", "GPU1"]
    assert topology.matrix == [["X", "SYS"], ["SYS", "X"]]
    assert topology.numa_affinity == {"GPU0": "0", "GPU1": "1"}


def test_topo_pasted_with_spaces_instead_of_tabs_still_parses() -> None:
    text = ("        GPU0    GPU1    NIC0    CPU Affinity    NUMA Affinity   GPU NUMA ID\n"
            "GPU0     X      NV12    PXB     48-63,176-191   3               N/A\n"
            "GPU1    NV12     X      PXB     48-63,176-191   3               N/A\n"
            "NIC0    PXB     PXB      X\n\nLegend:\n\n  X    = Self\n\nNIC Legend:\n\n  NIC0: mlx5_0\n")
    topology = parse_topo_matrix(text)
    assert isinstance(topology, TopologyFacts)
    assert topology.matrix == [["X", "NV12", "PXB"], ["NV12", "X", "PXB"], ["PXB", "PXB", "X"]]
    assert topology.cpu_affinity == {"GPU0": "48-63,176-191", "GPU1": "48-63,176-191"}
    assert topology.nic_names == {"NIC0": "mlx5_0"}


def test_topo_missing_rows_and_cells_are_question_marks() -> None:
    topology = parse_topo_matrix("\tGPU0\tGPU1\tCPU Affinity\nGPU0\t X \n")
    assert isinstance(topology, TopologyFacts)
    assert topology.matrix == [["X", "?"], ["?", "?"]]


def test_topo_error_text_is_unavailable() -> None:
    result = parse_topo_matrix("Failed to initialize NVML: Driver/library version mismatch\n")
    assert isinstance(result, Unavailable)
    assert "header" in result.reason


# --------------------------------------------------------------------------------------- p2p


def test_p2p_h100_single_gpu_is_self_only() -> None:
    for mode in "rn":
        p2p = parse_topo_p2p(read(H100 / f"nvidia-smi-topo-p2p-{mode}.txt"))
        assert p2p == P2pMatrix(["GPU0"], [["X"]])


def test_p2p_nvlink_machine_is_ok_everywhere() -> None:
    for mode in "rwn":
        p2p = parse_topo_p2p(read(NVLINK8 / f"nvidia-smi-topo-p2p-{mode}.txt"))
        assert isinstance(p2p, P2pMatrix)
        assert p2p.devices == [f"GPU{i}" for i in range(8)]
        assert all(p2p.matrix[i][j] == ("X" if i == j else "OK") for i in range(8) for j in range(8))


def test_p2p_across_sockets_is_chipset_not_supported_and_no_nvlink() -> None:
    assert parse_topo_p2p(read(PCIE2 / "nvidia-smi-topo-p2p-r.txt")) == P2pMatrix(
        ["GPU0", "GPU1"], [["X", "CNS"], ["CNS", "X"]])
    assert parse_topo_p2p(read(PCIE2 / "nvidia-smi-topo-p2p-n.txt")) == P2pMatrix(
        ["GPU0", "GPU1"], [["X", "NS"], ["NS", "X"]])


def test_p2p_aligns_to_another_gpu_order_and_marks_unknowns() -> None:
    p2p = P2pMatrix(["GPU0", "GPU1"], [["X", "OK"], ["CNS", "X"]])
    assert p2p.aligned(["GPU1", "GPU0", "GPU2"]) == [["X", "CNS", "?"], ["OK", "X", "?"], ["?", "?", "?"]]


# ----------------------------------------------------------------------------- small formats


def test_proc_driver_version_names_the_open_kernel_module_and_its_version() -> None:
    module = parse_proc_driver_version(read(H100 / "proc-driver-nvidia-version.txt"))
    assert isinstance(module, KernelModule)
    assert module.version == "580.159.04"
    assert module.open_source
    assert module.description.startswith("NVIDIA UNIX Open Kernel Module for x86_64 580.159.04")


def test_proc_driver_version_of_the_proprietary_module() -> None:
    text = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\n"
    module = parse_proc_driver_version(text)
    assert isinstance(module, KernelModule)
    assert module.version == "535.104.05"
    assert not module.open_source
    assert isinstance(parse_proc_driver_version("GCC version: gcc 12\n"), Unavailable)


def test_compute_capability_csv_is_keyed_by_normalised_bus_id() -> None:
    text = read(DOWNGRADED / "nvidia-smi-query-compute-cap.csv")
    assert parse_compute_cap_csv(text) == {"00000000:18:00.0": "9.0", "00000000:2A:00.0": "9.0"}
    assert parse_compute_cap_csv('Field "compute_cap" is not a valid field to query.\n') == {}


def test_strip_ansi_removes_underline_escapes() -> None:
    assert strip_ansi("\t\x1b[4mGPU0\tCPU Affinity\x1b[0m") == "\tGPU0\tCPU Affinity"


# ------------------------------------------------------------------------ never raise (fuzz)

TOPO_ALPHABET = st.sampled_from(["\t", " ", "\n", "GPU0", "GPU1", "NIC0", "X", " X ", "NV18", "SYS", "OK",
                                 "CPU Affinity", "NUMA Affinity", "GPU NUMA ID", "Legend:", "NIC Legend:",
                                 "  NIC0: mlx5_0", "\x1b[4m", "\x1b[0m", "0-15", "N/A", ":", "é", "\x00"])
topo_texts = st.one_of(st.text(), st.lists(TOPO_ALPHABET, max_size=60).map("".join))


@settings(max_examples=300)
@given(topo_texts)
def test_topo_and_p2p_parsers_never_raise(text: str) -> None:
    topology = parse_topo_matrix(text)
    if isinstance(topology, TopologyFacts):
        assert all(len(row) == len(topology.devices) for row in topology.matrix)
    p2p = parse_topo_p2p(text)
    if isinstance(p2p, P2pMatrix):
        assert all(len(row) == len(p2p.devices) for row in p2p.matrix)
        p2p.aligned(["GPU0", "GPU1"])


H100_XML = read(H100 / "nvidia-smi-q-x.xml")


@settings(max_examples=200)
@given(st.integers(0, len(H100_XML)), st.integers(0, 400), st.text(max_size=20))
def test_xml_parser_never_raises_on_cut_or_corrupted_output(start: int, length: int, junk: str) -> None:
    corrupted = H100_XML[:start] + junk + H100_XML[start + length:]
    result = parse_smi_query_xml(corrupted)
    assert isinstance(result, (SmiQuery, Unavailable))


XML_VALUES = st.sampled_from(["N/A", "", "abc", "-1", "16x", "1e9", "P", "Pnan", "Enabled", "Yes", "Active",
                              "12.5 W", "[Not Supported]", "99999999999999999999 MiB"])


@settings(max_examples=200)
@given(st.lists(XML_VALUES, min_size=1, max_size=6))
def test_xml_parser_never_raises_on_odd_values(values: list[str]) -> None:
    text = H100_XML
    targets = ["<performance_state>P0", "<max_link_width>16x", "<gpu_temp>47 C",
               "<dram_uncorrectable>2", "<current_ecc>Enabled", "<remapped_row_pending>No"]
    for old, new in zip(targets[:len(values)], values, strict=True):
        tag = old.split(">")[0]
        text = text.replace(old, f"{tag}>{new}")
    assert isinstance(parse_smi_query_xml(text), SmiQuery)


@given(st.text())
def test_small_parsers_never_raise(text: str) -> None:
    parse_proc_driver_version(text)
    parse_compute_cap_csv(text)
    parse_proc_driver_version("NVRM version: " + text)
