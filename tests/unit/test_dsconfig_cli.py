"""``clusterkit config check`` end to end: arguments, facts files, exit codes and the three renderings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from clusterkit.cli import main
from clusterkit.dsconfig.check import check_config
from clusterkit.dsconfig.load import load_ds_config
from clusterkit.dsconfig.topology import topology_from_counts
from clusterkit.node.facts import to_jsonable
from clusterkit.ui.report import render_table
from tests.factories import healthy_gpu_node, make_host, with_all_gpus

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "dsconfig"


def v100_doctor_json(tmp_path: Path) -> Path:
    nodes = [with_all_gpus(healthy_gpu_node(8, host=make_host(f"v100-{i}")), name="Tesla V100-SXM2-32GB",
                           compute_capability="7.0") for i in range(2)]
    path = tmp_path / "doctor.json"
    path.write_text(json.dumps({"schema": "clusterkit.doctor/v1",
                                "facts": {n.host.hostname: to_jsonable(n) for n in nodes}}))
    return path


def test_trainer_arguments_after_the_double_dash_reach_the_check(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["config", "check", str(FIXTURES / "hf_trainer_zero3_auto.json"), "--world-size", "8",
                 "--shared-fs", "yes", "--json", "--", "train.py", "--per_device_train_batch_size", "2", "--bf16",
                 "--json"])  # the trailing --json belongs to train.py
    doc = json.loads(capsys.readouterr().out)
    assert code == 0, [f for f in doc["findings"] if f["outcome"] == "fail"]
    assert doc["runner"] == "hf-trainer"
    assert doc["effective_config"]["train_batch_size"] == 16
    assert doc["effective_config"]["bf16"]["enabled"] is True
    assert doc["config_summary"]["batch"]["train_batch_size"] == 16


def test_bf16_on_v100_facts_from_a_doctor_report_exits_1_naming_each_host(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("v100-0 slots=8\nv100-1 slots=8\n")
    code = main(["config", "check", str(FIXTURES / "hf_trainer_zero3_auto.json"), "--hostfile", str(hostfile),
                 "--facts", str(v100_doctor_json(tmp_path)), "--shared-fs", "yes", "--", "--bf16"])
    out = capsys.readouterr().out
    assert code == 1
    assert " ✗ [v100-[0-1]] bf16-unsupported-gpu" in out  # one block naming both hosts
    assert "Type bf16 is not supported on your device." in out


def test_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(FIXTURES / "plain_deepspeed_zero1.json")
    assert main(["config", "check", config, "--include", "a"]) == 2
    assert "--include/--exclude need --hostfile" in capsys.readouterr().err
    assert main(["config", "check", config, "--hostfile", str(tmp_path / "missing")]) == 2
    assert main(["config", "check", config, "--facts", str(tmp_path / "missing.json")]) == 2
    assert "facts file not found" in capsys.readouterr().err
    assert main(["config", "check", config, "--", "--per_device_train_batch_size", "x"]) == 2


def test_a_terminal_and_a_pipe_get_the_same_findings_from_the_one_renderer() -> None:
    report = check_config(load_ds_config(FIXTURES / "plain_deepspeed_zero1.json"),
                          topology=topology_from_counts(world_size=8))
    texts = []
    for terminal in (True, False):
        console = Console(record=True, width=100, force_terminal=terminal)
        render_table(report, console)
        texts.append(console.export_text())
    assert texts[0] == texts[1]
    assert "batch-arithmetic" in texts[0] and "set train_batch_size to 128" in texts[0]
    assert "1 error, 0 warnings" in texts[0]
    assert texts[0].startswith(f"{FIXTURES / 'plain_deepspeed_zero1.json'}: DeepSpeed ")


def test_config_check_with_and_without_facts_agrees_on_this_machine(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--json"]) in (0, 1)
    facts = tmp_path / "doctor.json"
    facts.write_text(capsys.readouterr().out)
    config = tmp_path / "nvme.json"
    config.write_text(json.dumps({"train_micro_batch_size_per_gpu": 1, "zero_optimization": {
        "stage": 3, "offload_param": {"device": "nvme", "nvme_path": "/local_nvme"}}}, indent=2))

    def judged(*extra: str) -> list[tuple[str, str, str]]:
        main(["config", "check", str(config), "--world-size", "1", "--json", *extra])
        doc = json.loads(capsys.readouterr().out)
        # The same verdicts and words; only where the facts came from is named differently.
        return [(f["check"], f["outcome"], f["message"].split("checked via")[0]) for f in doc["findings"]]

    without, with_facts = judged(), judged("--facts", str(facts))
    assert any(f[0] == "nvme-offload-libaio" and f[1] != "skip" for f in without)
    assert without == with_facts
