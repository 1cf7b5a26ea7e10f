"""GPU health checks: one failing and one passing row per check (and the skip where it applies)."""

from __future__ import annotations

import dataclasses

import pytest

from clusterkit.node.facts import EccFacts, NodeFacts, NvidiaFacts, RemappedRowsFacts, RetiredPagesFacts, Unavailable
from tests.factories import (
    HGX_BUS_IDS,
    CheckCase,
    assert_case,
    assert_table_covers,
    cpu_only_node,
    fail,
    h100_fixture_node,
    healthy_gpu_node,
    make_gpu,
    make_nvidia,
    passes,
    run_check,
    skips,
    with_all_gpus,
    with_gpu,
    with_section,
    xid,
)

NVML_GONE = Unavailable("NVML did not start: NVMLError_DriverNotLoaded: Driver Not Loaded")


def ecc(**changes: object) -> EccFacts:
    return dataclasses.replace(make_gpu().ecc, **changes)


def rows(**changes: object) -> RemappedRowsFacts:
    return dataclasses.replace(make_gpu().remapped_rows, **changes)


def nvml_down(device_files: list[str]) -> NvidiaFacts:
    return make_nvidia(8, gpus=NVML_GONE, device_files=device_files)


def env_missing(facts: NodeFacts) -> NodeFacts:
    """``facts`` of a node where the training interpreter does not exist (the env is missing there)."""
    gone = Unavailable("interpreter /opt/venv/bin/python does not exist")
    return with_section(facts, "python_env", exists=False, version=gone, torch_version=gone, torch_cuda=gone,
                        torch_cuda_available=gone, torch_device_count=gone)


def volta_node(pending: bool) -> object:
    pages = RetiredPagesFacts(single_bit=2, double_bit=1, pending=pending)
    facts = with_all_gpus(healthy_gpu_node(2), name="Tesla V100-SXM2-32GB", compute_capability="7.0",
                          retired_pages=pages)
    return with_all_gpus(facts, remapped_rows=RemappedRowsFacts(*(Unavailable("NVMLError_NotSupported"),) * 4))


CASES: list[CheckCase] = [
    # nvml-unavailable
    fail("nvml-unavailable", "device-files-but-no-nvml",
         lambda: healthy_gpu_node(nvidia=nvml_down(["/dev/nvidia0", "/dev/nvidia1", "/dev/nvidiactl"])),
         "NVML cannot be read (NVML did not start: NVMLError_DriverNotLoaded: Driver Not Loaded) although 2 GPU "
         "device file(s) exist", where="NVML"),
    fail("nvml-unavailable", "hostfile-expects-gpus",
         lambda: healthy_gpu_node(nvidia=nvml_down([])), "hostfile gives this node 8 slots", expected_gpus=8),
    passes("nvml-unavailable", "nvml-reads", healthy_gpu_node),
    skips("nvml-unavailable", "cpu-only-run", cpu_only_node, "torch is a CPU build", expected_gpus=2),
    skips("nvml-unavailable", "nothing-expects-gpus", lambda: healthy_gpu_node(nvidia=nvml_down([]))),
    # issue 19, W11: without the env nothing says whether the node should have GPUs: unknown, not missing
    skips("nvml-unavailable", "env-missing-no-gpu-visible", lambda: env_missing(cpu_only_node()),
          "whether this node should have GPUs is unknown", expected_gpus=2),
    fail("nvml-unavailable", "env-missing-but-gpu-device-files",
         lambda: env_missing(healthy_gpu_node(nvidia=nvml_down(["/dev/nvidia0"]))), "1 GPU device file(s) exist",
         expected_gpus=8),
    # gpu-count-below-slots / above-slots
    fail("gpu-count-below-slots", "4-gpus-8-slots", lambda: healthy_gpu_node(4), "gives gpu-node-0 8 slots but it "
         "has 4 GPU(s)", expected_gpus=8, fix_contains="gpu-node-0 slots=4"),
    passes("gpu-count-below-slots", "8-gpus-8-slots", healthy_gpu_node, expected_gpus=8),
    skips("gpu-count-below-slots", "no-hostfile", healthy_gpu_node, "no hostfile"),
    skips("gpu-count-below-slots", "cpu-only-run", cpu_only_node, "slots are CPU processes", expected_gpus=2),
    skips("gpu-count-below-slots", "env-missing-no-gpu-visible", lambda: env_missing(cpu_only_node()),
          "does not exist here (interpreter-missing)", expected_gpus=2),
    skips("gpu-count-below-slots", "torch-unreadable-no-gpu-visible",
          lambda: with_section(cpu_only_node(), "python_env", torch_cuda=Unavailable("No module named 'torch'")),
          "No module named 'torch'", expected_gpus=2),
    fail("gpu-count-below-slots", "env-missing-4-gpus-8-slots", lambda: env_missing(healthy_gpu_node(4)),
         "gives gpu-node-0 8 slots but it has 4 GPU(s)", expected_gpus=8),
    fail("gpu-count-above-slots", "8-gpus-4-slots", healthy_gpu_node, "4 GPU(s) stay idle", expected_gpus=4),
    passes("gpu-count-above-slots", "8-gpus-8-slots", healthy_gpu_node, expected_gpus=8),
    # PCIe
    fail("pcie-width-degraded", "x8", lambda: with_gpu(healthy_gpu_node(), 3, pcie_width_current=8),
         "GPU 3 PCIe link runs Gen5 x8, max x16", where="GPU 3 (0000:5d:00.0)", count=1),
    passes("pcie-width-degraded", "x16", healthy_gpu_node),
    skips("pcie-width-degraded", "cpu-only", cpu_only_node),
    fail("pcie-gen-degraded", "gen3-under-load",
         lambda: with_gpu(healthy_gpu_node(), 2, pcie_gen_current=3, utilization_gpu_pct=97,
                          clock_event_reasons=[]),
         "GPU 2 PCIe link runs Gen3 x16 under load, max Gen5 x16", where="GPU 2 (0000:3a:00.0)"),
    fail("pcie-gen-degraded", "gen3-in-p0-not-idle",
         lambda: with_gpu(healthy_gpu_node(), 0, pcie_gen_current=3, clock_event_reasons=[]), "Gen3"),
    fail("pcie-gen-degraded", "loaded-and-idle", lambda: with_gpu(
        with_gpu(healthy_gpu_node(), 1, pcie_gen_current=1, performance_state=8), 2, pcie_gen_current=3,
        utilization_gpu_pct=90, clock_event_reasons=[]), "GPU 2 PCIe link runs Gen3", count=1),
    passes("pcie-gen-degraded", "gen5", healthy_gpu_node),
    skips("pcie-gen-degraded", "idle-power-saving",
          lambda: with_gpu(healthy_gpu_node(), 1, pcie_gen_current=1, performance_state=8),
          "GPU 1 idles at Gen1 (max Gen5): power saving"),
    fail("pcie-replay-errors", "many-replays", lambda: with_gpu(healthy_gpu_node(), 5, pcie_replay_count=4711),
         "GPU 5 counted 4711 PCIe replays"),
    passes("pcie-replay-errors", "no-replays", healthy_gpu_node),
    # ECC and remapping
    fail("ecc-disabled", "two-gpus", lambda: with_gpu(with_gpu(healthy_gpu_node(), 1, ecc=ecc(mode_enabled=False)),
                                                      2, ecc=ecc(mode_enabled=False)),
         "ECC is disabled on GPUs 1-2", fix_contains="sudo nvidia-smi -i 1 -e 1 && sudo nvidia-smi -i 2 -e 1"),
    passes("ecc-disabled", "enabled", healthy_gpu_node),
    passes("ecc-disabled", "not-supported", lambda: with_all_gpus(
        healthy_gpu_node(), ecc=ecc(mode_enabled=Unavailable("NVMLError_NotSupported: Not Supported")))),
    fail("ecc-uncorrectable-volatile", "dbe", lambda: with_gpu(healthy_gpu_node(), 6, ecc=ecc(volatile_uncorrected=2)),
         "GPU 6 has 2 uncorrectable ECC error(s) since the driver loaded", fix_contains="sudo nvidia-smi -r -i 6"),
    passes("ecc-uncorrectable-volatile", "clean", h100_fixture_node),
    fail("ecc-aggregate-uncorrectable", "h100-fixture-history", h100_fixture_node,
         "GPU 0 has recorded 2 uncorrectable ECC error(s) in its lifetime", where="GPU 0 (0000:00:06.0)"),
    passes("ecc-aggregate-uncorrectable", "clean", healthy_gpu_node),
    fail("row-remap-pending", "pending", lambda: with_gpu(healthy_gpu_node(), 4, remapped_rows=rows(pending=True)),
         "GPU 4 has a row remapping pending", fix_contains="sudo nvidia-smi -r -i 4"),
    passes("row-remap-pending", "h100-fixture-not-pending", h100_fixture_node),
    skips("row-remap-pending", "pre-ampere", lambda: volta_node(False), "row remapping"),
    fail("row-remap-failure", "failure", lambda: with_gpu(healthy_gpu_node(), 7, remapped_rows=rows(failure=True)),
         "GPU 7 reports a row remapping failure", fix_contains="RMA GPU 7"),
    passes("row-remap-failure", "h100-fixture", h100_fixture_node),
    fail("row-remap-history", "h100-fixture", h100_fixture_node,
         "GPU 0 has 3 row(s) remapped after uncorrectable errors and 0 after correctable errors"),
    passes("row-remap-history", "none-remapped", healthy_gpu_node),
    fail("retired-pages-pending", "volta-pending", lambda: volta_node(True),
         "GPU 0 has a page retirement pending (2 single-bit, 1 double-bit pages retired)", count=2),
    passes("retired-pages-pending", "volta-clean", lambda: volta_node(False)),
    skips("retired-pages-pending", "hopper", healthy_gpu_node, "Ampere and later use row remapping"),
    # clocks and heat
    fail("gpu-hw-slowdown", "thermal",
         lambda: with_gpu(healthy_gpu_node(), 3, sm_clock_mhz=990, utilization_gpu_pct=100,
                          clock_event_reasons=["hw_slowdown", "hw_thermal_slowdown"]),
         "GPU 3 hardware thermal slowdown: the GPU is too hot (SM clock 990/1980 MHz)", count=2),
    fail("gpu-hw-slowdown", "power-brake",
         lambda: with_gpu(healthy_gpu_node(), 0, clock_event_reasons=["hw_power_brake_slowdown"]),
         "power brake", fix_contains="PSU"),
    passes("gpu-hw-slowdown", "idle", healthy_gpu_node),
    fail("gpu-throttled", "sw-thermal", lambda: with_gpu(healthy_gpu_node(), 1, temperature_c=88,
                                                         clock_event_reasons=["sw_thermal_slowdown"]),
         "GPU 1 is slowed by the driver for heat at 88 C"),
    fail("gpu-throttled", "power-cap-under-load",
         lambda: with_gpu(healthy_gpu_node(), 2, utilization_gpu_pct=100, power_draw_w=699.6,
                          clock_event_reasons=["sw_power_cap"]), "GPU 2 is capped by its power limit (700 W of 700 W)"),
    passes("gpu-throttled", "power-cap-at-idle", lambda: with_gpu(healthy_gpu_node(), 2, performance_state=8,
                                                                  clock_event_reasons=["sw_power_cap"])),
    passes("gpu-throttled", "idle", healthy_gpu_node),
    fail("gpu-temperature", "hot", lambda: with_gpu(healthy_gpu_node(), 0, temperature_c=91),
         "GPU 0 is at 91 C (warning at 85 C)"),
    passes("gpu-temperature", "h100-at-47c", h100_fixture_node),
    # modes and usage
    fail("persistence-mode-off", "all-off", lambda: with_all_gpus(healthy_gpu_node(), persistence_mode=False),
         "persistence mode is off on GPUs 0-7", count=1),
    passes("persistence-mode-off", "on", healthy_gpu_node),
    fail("gpu-mig-enabled", "mig-on", lambda: with_gpu(healthy_gpu_node(), 0, mig_enabled=True),
         "MIG is enabled on GPU 0", fix_contains="sudo nvidia-smi -i 0 -mig 0"),
    passes("gpu-mig-enabled", "mig-off", healthy_gpu_node),
    fail("gpu-processes-present", "busy", lambda: with_gpu(healthy_gpu_node(), 2, compute_processes=1,
                                                           memory_used_bytes=12 * 1024**3),
         "GPU 2 already runs 1 compute process(es) using 12.0 GiB"),
    passes("gpu-processes-present", "free", healthy_gpu_node),
    fail("gpu-compute-mode-prohibited", "prohibited",
         lambda: with_gpu(healthy_gpu_node(), 1, compute_mode="prohibited"),
         "GPU 1 is in compute mode Prohibited", fix_contains="sudo nvidia-smi -i 1 -c DEFAULT"),
    passes("gpu-compute-mode-prohibited", "exclusive-process-is-fine",
           lambda: with_all_gpus(healthy_gpu_node(), compute_mode="exclusive_process")),
    fail("bf16-unsupported", "v100", lambda: volta_node(False),
         "GPUs 0-1: Tesla V100-SXM2-32GB (compute capability 7.0) cannot run bf16", count=1),
    passes("bf16-unsupported", "h100", healthy_gpu_node),
    # XID
    fail("xid-critical", "fallen-off-the-bus",
         lambda: with_section(healthy_gpu_node(), "nvidia", xid_events=[xid(79, HGX_BUS_IDS[4])] * 2 + [xid(13)]),
         "Xid 79 x2 on GPU 4 (0000:9a:00.0): GPU has fallen off the bus", count=1, fix_contains="reboot"),
    fail("xid-critical", "unknown-bus", lambda: with_section(healthy_gpu_node(), "nvidia",
                                                            xid_events=[xid(48, "00000000:C1:00.0")]),
         "Xid 48 on PCI 0000:c1:00.0: double-bit ECC error"),
    passes("xid-critical", "application-xid-only", lambda: with_section(healthy_gpu_node(), "nvidia",
                                                                       xid_events=[xid(13), xid(31)])),
    skips("xid-critical", "kernel-log-unreadable", lambda: with_section(
        healthy_gpu_node(), "nvidia", xid_events=Unavailable("dmesg: read kernel buffer failed: Operation not "
                                                             "permitted")), "Operation not permitted"),
    fail("xid-events", "application-fault", lambda: with_section(healthy_gpu_node(), "nvidia",
                                                                xid_events=[xid(31, HGX_BUS_IDS[1])]),
         "Xid 31 on GPU 1 (0000:2a:00.0): GPU memory page fault", count=1),
    fail("xid-events", "code-not-in-catalog", lambda: with_section(healthy_gpu_node(), "nvidia",
                                                                  xid_events=[xid(999)]),
         "Xid 999 on GPU 0 (0000:18:00.0): not in clusterkit's catalog"),
    passes("xid-events", "no-events", healthy_gpu_node),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_gpu_check(case: CheckCase) -> None:
    assert_case(case)


def test_every_gpu_check_has_a_failing_and_a_passing_case() -> None:
    assert_table_covers("gpu", CASES)


def test_a_healthy_node_passes_every_gpu_check_or_skips_with_a_reason() -> None:
    for check_id in {case.check_id for case in CASES}:
        for finding in run_check(check_id, healthy_gpu_node(), expected_gpus=8):
            assert finding.outcome.value in ("pass", "skip"), finding
            assert finding.message


def test_nvml_facts_read_on_the_real_h100_give_only_the_known_findings() -> None:
    failing = {}
    for check_id in {case.check_id for case in CASES}:
        for finding in run_check(check_id, h100_fixture_node(), expected_gpus=1):
            if finding.outcome.value == "fail":
                failing[check_id] = finding.severity.value
    assert failing == {"ecc-aggregate-uncorrectable": "warning", "row-remap-history": "info"}


def test_cpu_only_nodes_skip_gpu_checks_saying_it_is_a_cpu_run() -> None:
    findings = run_check("pcie-width-degraded", cpu_only_node())
    assert findings[0].message == "no NVIDIA GPU and torch is a CPU build"


def test_a_gpu_with_unreadable_facts_does_not_hide_another_gpus_problem() -> None:
    unread = Unavailable("NVMLError_Unknown: Unknown Error")
    facts = with_gpu(with_gpu(healthy_gpu_node(), 0, pcie_width_current=unread), 5, pcie_width_current=4)
    findings = run_check("pcie-width-degraded", facts)
    assert [(f.outcome.value, f.message) for f in findings] == [("fail", "GPU 5 PCIe link runs Gen5 x4, max x16")]


def test_a_check_skips_with_the_reason_when_no_gpu_has_the_fact() -> None:
    facts = with_all_gpus(healthy_gpu_node(), clock_event_reasons=Unavailable("NVMLError_NotSupported: Not Supported"))
    findings = run_check("gpu-hw-slowdown", facts)
    assert [(f.outcome.value, f.message) for f in findings] == [
        ("skip", "clock-event reasons unavailable: NVMLError_NotSupported: Not Supported")]
