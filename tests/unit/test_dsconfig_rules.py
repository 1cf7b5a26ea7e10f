"""Every config rule, table-driven: a config as users write it that fails the rule, and one that passes.

The base configs are in tests/fixtures/dsconfig: HF Trainer style with "auto", Accelerate style, and
plain DeepSpeed. Each case changes a few keys of a base config (``None`` deletes a key).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from clusterkit.core.findings import Finding, Outcome, Severity
from clusterkit.dsconfig.check import check_config
from clusterkit.dsconfig.load import parse_ds_config
from clusterkit.dsconfig.resources import ClusterResources, resources_from_facts
from clusterkit.dsconfig.rules import Runner, SharedFs, load_rules
from clusterkit.dsconfig.topology import topology_from_counts, topology_from_hostfile
from clusterkit.node.facts import NodeFacts
from tests.factories import h100_fixture_node, healthy_gpu_node, make_host, with_all_gpus

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "dsconfig"
HF3 = "hf_trainer_zero3_auto.json"
HF2 = "hf_trainer_zero2_auto.json"
ACC = "accelerate_zero2.json"
PLAIN = "plain_deepspeed_zero1.json"
TRAINER = ["train.py", "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "2", "--bf16",
           "--max_steps", "1000", "--warmup_ratio", "0.05"]


def base(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return data


def patched(name: str, changes: dict[str, Any]) -> dict[str, Any]:
    """``name`` with dotted keys set (or deleted when the value is None)."""
    data = copy.deepcopy(base(name))
    for dotted_key, value in changes.items():
        *parents, leaf = dotted_key.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return data


def resources(*facts: NodeFacts) -> ClusterResources:
    return resources_from_facts({f.host.hostname: f for f in facts}, "test facts")


def v100_node() -> NodeFacts:
    return with_all_gpus(healthy_gpu_node(8, host=make_host("v100-node")), name="Tesla V100-SXM2-32GB",
                         compute_capability="7.0", memory_total_bytes=32 * 1024**3)


@dataclass(frozen=True)
class Case:
    rule: str
    name: str
    config: str
    failing: dict[str, Any]
    passing: dict[str, Any]
    contains: str
    options: dict[str, Any] = field(default_factory=dict)
    pass_options: dict[str, Any] | None = None


W16 = {"topology": topology_from_counts(world_size=16)}
HF = {"trainer_argv": TRAINER, "topology": topology_from_counts(world_size=16)}
TWO_NODES = topology_from_counts(nodes=2, gpus_per_node=8)

CASES = [
    Case("batch-arithmetic", "all three given and inconsistent", PLAIN, {"train_batch_size": 128},
         {"train_batch_size": 256}, "128 != train_micro_batch_size_per_gpu 8 x gradient_accumulation_steps 2 x "
         "world size 16 = 256", W16),
    Case("batch-arithmetic", "derived accumulation truncates", PLAIN,
         {"train_batch_size": 200, "gradient_accumulation_steps": None},
         {"train_batch_size": 256, "gradient_accumulation_steps": None},
         "DeepSpeed derives gradient_accumulation_steps 1 by integer division", W16),
    Case("batch-arithmetic", "tensor parallel divides the world", PLAIN, {},
         {"train_batch_size": 128}, "data-parallel size (16 ranks / tp=2)", {**W16, "parallel": None}),
    Case("auto-needs-trainer", "HF config handed to plain DeepSpeed", HF3, {}, {}, "gradient_clipping is \"auto\"",
         {"runner": Runner.DEEPSPEED}, {"runner": Runner.DEEPSPEED, "config": PLAIN}),
    Case("auto-runner-unknown", "auto without launch arguments", HF2, {}, {}, "14 values are \"auto\"",
         {}, {"config": PLAIN}),
    Case("auto-filled", "HF Trainer fills auto", HF3, {}, {}, "train_batch_size \"auto\" -> 128", HF,
         {**HF, "config": PLAIN}),
    Case("auto-unfilled", "stage auto is never filled", HF3, {"zero_optimization.stage": "auto"}, {},
         "zero_optimization.stage is \"auto\" but the HF Trainer does not fill it", HF),
    Case("auto-unfilled", "Accelerate does not fill betas", ACC, {"optimizer.params.betas": "auto"}, {},
         "optimizer.params.betas is \"auto\" but Accelerate does not fill it", {"runner": Runner.ACCELERATE}),
    Case("hf-mismatch", "train_batch_size pinned to the wrong value", HF3, {"train_batch_size": 256}, {},
         "train_batch_size is 256 but the HF Trainer computes 128", HF),
    Case("hf-mismatch", "fp16 pinned while --bf16 is passed", HF3, {"fp16.enabled": True}, {},
         "- ds fp16.enabled=True vs hf fp16|fp16_full_eval+fp16_backend(amp)=False", HF),
    Case("fp16-and-bf16", "both enabled", PLAIN, {"bf16": {"enabled": True}}, {"bf16": {"enabled": False}},
         "bfloat16 and fp16 modes cannot be simultaneously enabled"),
    Case("bf16-unsupported-gpu", "bf16 on V100", PLAIN, {"fp16": None, "bf16": {"enabled": True}},
         {"fp16": None, "bf16": {"enabled": True}}, "compute capability 7.0 < 8.0",
         {"resources": resources(v100_node())}, {"resources": resources(healthy_gpu_node(8))}),
    Case("precision-flag-without-section", "--bf16 without a bf16 section", PLAIN, {"fp16": None},
         {"fp16": None, "bf16": {"enabled": "auto"}}, "--bf16 is passed but the config has no \"bf16\" section",
         {**HF, "trainer_argv": ["--bf16", "--per_device_train_batch_size", "8",
                                 "--gradient_accumulation_steps", "2"]}),
    Case("offload-param-needs-stage3", "param offload at stage 2", HF2,
         {"zero_optimization.offload_param": {"device": "cpu"}},
         {"zero_optimization.offload_param": {"device": "cpu"}, "zero_optimization.stage": 3},
         "offload_param.device is 'cpu' but zero_optimization.stage is 2", HF),
    Case("offload-optimizer-needs-zero", "optimizer offload with ZeRO off", PLAIN,
         {"zero_optimization": {"stage": 0, "offload_optimizer": {"device": "cpu"}}},
         {"zero_optimization": {"stage": 1, "offload_optimizer": {"device": "cpu"}}},
         "ZeRO is off (zero_optimization.stage 0)", W16),
    Case("nvme-offload-path", "nvme without a path", HF3, {"zero_optimization.offload_param": {"device": "nvme"}},
         {"zero_optimization.offload_param": {"device": "nvme", "nvme_path": "/local_nvme"}},
         "offload_param.nvme_path is not set", HF),
    Case("nvme-offload-libaio", "nvme on a node without libaio", HF3,
         {"zero_optimization.offload_param": {"device": "nvme", "nvme_path": "/nvme"}},
         {"zero_optimization.offload_param": {"device": "nvme", "nvme_path": "/nvme"}}, "lacks libaio",
         {**HF, "resources": resources(h100_fixture_node())}, {**HF, "resources": resources(healthy_gpu_node(8))}),
    Case("zeropp-hpz-partition-size", "hpZ group smaller than a node", HF3,
         {"zero_optimization.zero_hpz_partition_size": 4}, {"zero_optimization.zero_hpz_partition_size": 8},
         "zero_hpz_partition_size is 4 but each node runs 8 GPUs", {**HF, "topology": TWO_NODES}),
    Case("zero3-save-16bit-weights", "ZeRO-3 without gathering weights on save", HF3,
         {"zero_optimization.stage3_gather_16bit_weights_on_model_save": None}, {},
         "the saved model file will be nearly empty", HF),
    Case("multinode-checkpoint-storage", "two nodes, no shared filesystem", PLAIN, {},
         {"checkpoint": {"use_node_local_storage": True}}, "without a shared filesystem",
         {"topology": TWO_NODES, "shared_fs": SharedFs.NO}),
    Case("optimizer-type", "misspelt optimizer", PLAIN, {"optimizer.type": "AdamWW"}, {"optimizer.type": "AdamW"},
         "did you mean 'AdamW'?"),
    Case("optimizer-params", "misspelt Adam parameter", PLAIN,
         {"optimizer.params": {"lr": 1e-4, "beta": [0.9, 0.95]}},
         {"optimizer.params": {"lr": 1e-4, "betas": [0.9, 0.95]}}, "did you mean 'betas'?"),
    Case("optimizer-params", "max_grad_norm as an optimizer parameter", PLAIN,
         {"optimizer.params.max_grad_norm": 1.0}, {}, "move the value to the top-level"),
    Case("zero-untested-optimizer", "SGD under ZeRO", PLAIN, {"optimizer": {"type": "SGD", "params": {"lr": 0.1}}},
         {"optimizer": {"type": "SGD", "params": {"lr": 0.1}}, "zero_allow_untested_optimizer": True},
         "which ZeRO has not tested"),
    Case("scheduler-type", "misspelt scheduler", PLAIN, {"scheduler.type": "WarmupDecay"},
         {"scheduler.type": "WarmupDecayLR", "scheduler.params.total_num_steps": 10000},
         "did you mean 'WarmupDecayLR'?"),
    Case("scheduler-type", "misspelt scheduler parameter", PLAIN, {"scheduler.params.warmup_steps": 10}, {},
         "scheduler.params.warmup_steps is not a parameter of WarmupLR; did you mean 'warmup_num_steps'?"),
    Case("offload-cpu-optimizer", "offload with the HF Trainer's own optimizer", HF3, {"optimizer": None}, {},
         "You are using ZeRO-Offload with a client provided optimizer", HF),
    Case("hf-optimizer-scheduler", "--adafactor with a DeepSpeed optimizer", HF3, {}, {},
         "Only one optimizer can be configured", {**HF, "trainer_argv": [*TRAINER, "--adafactor"]}, HF),
    Case("unknown-key", "misspelt ZeRO key", PLAIN, {"zero_optimization.overlap_com": True},
         {"zero_optimization.overlap_comm": True}, "did you mean 'overlap_comm'?"),
    Case("ignored-key", "misspelt top-level key", PLAIN, {"steps_per_prin": 10}, {}, "did you mean 'steps_per_print'?"),
    Case("ignored-key", "misspelt key in a plain section", PLAIN,
         {"activation_checkpointing": {"partition_activation": True}},
         {"activation_checkpointing": {"partition_activations": True}}, "did you mean 'partition_activations'?"),
    Case("removed-key", "elasticity block", PLAIN, {"elasticity": {"enabled": True}}, {},
         "Elastic training has been removed"),
    Case("deepspeed-rejects", "partial offload below stage 3", HF2,
         {"zero_optimization.offload_optimizer.ratio": 0.5}, {"zero_optimization.offload_optimizer.ratio": 1.0},
         "Partial offloading only supported for ZeRO Stage 3", HF),
    Case("deepspeed-rejects", "stage out of range", PLAIN, {"zero_optimization.stage": 4}, {},
         "zero_optimization.stage = 4"),
    Case("deepspeed-warning", "deprecated cpu_offload", HF2,
         {"zero_optimization.offload_optimizer": None, "zero_optimization.cpu_offload": True}, {},
         "Config parameter cpu_offload is deprecated use offload_optimizer instead", HF),
]


def _options(case: Case, failing: bool) -> dict[str, Any]:
    options = dict(case.options if failing or case.pass_options is None else case.pass_options)
    options.pop("config", None)
    if "parallel" in options:
        from clusterkit.dsconfig.topology import Parallelism

        options["parallel"] = Parallelism(tensor=2)
    return options


def findings_of(rule: str, data: dict[str, Any], **options: Any) -> list[Finding]:
    report = check_config(parse_ds_config(json.dumps(data, indent=2), "ds_config.json"), **options)
    assert not [f for f in report.findings if f.check_id == "internal-error"], report.findings
    return [f for f in report.findings if f.check_id == rule]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.rule}: {c.name}")
def test_rule_fails_on_the_bad_config(case: Case) -> None:
    found = findings_of(case.rule, patched(case.config, case.failing), **_options(case, True))
    failed = [f for f in found if f.outcome is Outcome.FAIL]
    assert failed, found
    assert any(case.contains in f.message or case.contains in f.fix for f in failed), failed
    assert all(f.fix for f in failed)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.rule}: {c.name}")
def test_rule_passes_on_the_fixed_config(case: Case) -> None:
    config = (case.pass_options or {}).get("config", case.config)
    found = findings_of(case.rule, patched(config, case.passing), **_options(case, False))
    assert [f.outcome for f in found] == [Outcome.PASS], found


def test_every_rule_has_a_failing_and_a_passing_case() -> None:
    assert set(load_rules()) == {case.rule for case in CASES}


@pytest.mark.parametrize("name", [HF3, HF2])
def test_hf_trainer_configs_as_published_pass_with_their_trainer_arguments(name: str) -> None:
    report = check_config(parse_ds_config((FIXTURES / name).read_text(), name), trainer_argv=TRAINER,
                          topology=topology_from_counts(world_size=16), shared_fs=SharedFs.YES)
    assert not report.has_errors, [f for f in report.findings if f.is_error]
    assert report.summary.batch is not None and report.summary.batch.train_batch_size == 16 * 4 * 2


def test_the_accelerate_config_passes_under_accelerate() -> None:
    report = check_config(parse_ds_config((FIXTURES / ACC).read_text(), ACC), runner=Runner.ACCELERATE,
                          topology=topology_from_counts(world_size=8))
    assert not report.has_errors, [f for f in report.findings if f.is_error]


def test_a_finding_points_at_the_key_to_change() -> None:
    text = (FIXTURES / PLAIN).read_text()
    report = check_config(parse_ds_config(text, "ds.json"), topology=topology_from_counts(world_size=8))
    batch = next(f for f in report.findings if f.check_id == "batch-arithmetic")
    assert (batch.outcome, batch.severity, batch.where) == (Outcome.FAIL, Severity.ERROR, "ds.json:2:3")
    assert "set train_batch_size to 128" in batch.fix and "set gradient_accumulation_steps to 4" in batch.fix


def test_world_size_comes_from_the_hostfile_after_include(tmp_path: Path) -> None:
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("a slots=8\nb slots=8\n")
    topology = topology_from_hostfile(hostfile, include="a:0,1,2,3@b:0,1,2,3")
    assert (topology.world_size, topology.nodes, topology.gpus_per_node) == (8, 2, 4)
    report = check_config(parse_ds_config((FIXTURES / PLAIN).read_text(), "ds.json"), topology=topology)
    batch = next(f for f in report.findings if f.check_id == "batch-arithmetic")
    assert batch.outcome is Outcome.FAIL and "world size 8" in batch.message


def test_a_rule_that_needs_missing_facts_is_skipped_with_the_reason() -> None:
    data = patched(PLAIN, {"fp16": None, "bf16": {"enabled": True}})
    from clusterkit.node.facts import Unavailable

    found = findings_of("bf16-unsupported-gpu", data, resources=Unavailable("NVML not found"))
    assert [(f.outcome, f.message) for f in found] == [(Outcome.SKIP, "GPU facts unavailable: NVML not found")]
