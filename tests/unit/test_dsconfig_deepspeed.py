"""clusterkit's view of a config agrees with the installed DeepSpeed's own code."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clusterkit.core.findings import Outcome
from clusterkit.dsconfig.introspect import deepspeed_config_module, judge_with_deepspeed, known_top_level_keys
from clusterkit.dsconfig.load import DsConfig
from clusterkit.dsconfig.rules import CheckInput
from clusterkit.dsconfig.rules_batch import _AUTO_CRASH, batch_arithmetic
from clusterkit.dsconfig.summary import resolve_batch
from clusterkit.dsconfig.topology import topology_from_counts
from clusterkit.node.facts import Unavailable


def ds_module() -> Any:
    module = deepspeed_config_module()
    assert not isinstance(module, Unavailable), module
    return module


def deepspeed_batch_verdict(tb: int | None, mb: int | None, gas: int | None, world: int
                            ) -> tuple[bool, tuple[Any, Any, Any]]:
    """Run DeepSpeedConfig's own batch derivation and assertion with a given world size."""
    module = ds_module()
    config = module.DeepSpeedConfig.__new__(module.DeepSpeedConfig)
    config.world_size = world
    config.train_batch_size, config.train_micro_batch_size_per_gpu = tb, mb
    config.gradient_accumulation_steps = gas
    try:
        config._configure_train_batch_size()
    except AssertionError:
        return False, (config.train_batch_size, config.train_micro_batch_size_per_gpu,
                       config.gradient_accumulation_steps)
    return True, (config.train_batch_size, config.train_micro_batch_size_per_gpu,
                  config.gradient_accumulation_steps)


def clusterkit_batch_ok(tb: int | None, mb: int | None, gas: int | None, world: int) -> bool:
    data = {k: v for k, v in (("train_batch_size", tb), ("train_micro_batch_size_per_gpu", mb),
                              ("gradient_accumulation_steps", gas)) if v is not None}
    check = CheckInput(config=DsConfig("ds.json", data), effective=data,
                       topology=topology_from_counts(world_size=world))
    return not list(batch_arithmetic(check))


optional_size = st.none() | st.integers(min_value=1, max_value=64)


@settings(max_examples=400, deadline=None)
@given(optional_size, optional_size, optional_size, st.integers(min_value=1, max_value=32))
def test_batch_arithmetic_fails_exactly_when_deepspeed_asserts(tb: int | None, mb: int | None, gas: int | None,
                                                               world: int) -> None:
    ok, settled = deepspeed_batch_verdict(tb, mb, gas, world)
    assert clusterkit_batch_ok(tb, mb, gas, world) == ok
    if tb is not None or mb is not None:
        plan = resolve_batch({k: v for k, v in (("train_batch_size", tb), ("train_micro_batch_size_per_gpu", mb),
                                                ("gradient_accumulation_steps", gas)) if v is not None}, world)
        assert plan is not None
        assert (plan.train_batch_size, plan.micro_batch_per_gpu, plan.gradient_accumulation_steps) == settled
        assert plan.consistent == ok


@pytest.mark.parametrize("key", ["train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"])
def test_the_quoted_auto_type_error_is_what_deepspeed_raises(key: str) -> None:
    values: dict[str, Any] = {"train_batch_size": 8, "train_micro_batch_size_per_gpu": 8,
                              "gradient_accumulation_steps": 1, key: "auto"}
    module = ds_module()
    config = module.DeepSpeedConfig.__new__(module.DeepSpeedConfig)
    config.world_size = 1
    config.train_batch_size = values["train_batch_size"]
    config.train_micro_batch_size_per_gpu = values["train_micro_batch_size_per_gpu"]
    config.gradient_accumulation_steps = values["gradient_accumulation_steps"]
    with pytest.raises(TypeError) as err:
        config._configure_train_batch_size()
    assert f"TypeError: {err.value}" in _AUTO_CRASH[key]


def test_top_level_keys_are_read_from_deepspeed_not_a_list_of_ours() -> None:
    keys = known_top_level_keys()
    assert not isinstance(keys, Unavailable)
    assert {"train_batch_size", "zero_optimization", "bf16", "fp16", "optimizer", "scheduler",
            "gradient_clipping", "activation_checkpointing", "checkpoint"} <= keys
    assert "elasticity" not in keys  # a removed feature is not a known key


def test_deepspeed_verdict_lists_every_unknown_key_of_a_validated_section_at_once() -> None:
    verdict = judge_with_deepspeed({"train_micro_batch_size_per_gpu": 1, "zero_optimization": {
        "stage": 3, "overlap_com": True, "offload_optimizer": {"devic": "cpu"}}})
    assert not isinstance(verdict, Unavailable)
    unknown = {issue.path: issue.suggestions for issue in verdict.issues if issue.kind == "unknown-key"}
    assert unknown == {("zero_optimization", "overlap_com"): ("overlap_comm",),
                       ("zero_optimization", "offload_optimizer", "devic"): ("device",)}
    assert verdict.complete


def test_optimizer_params_are_not_called_ignored_because_deepspeed_reads_them_later() -> None:
    verdict = judge_with_deepspeed({"train_micro_batch_size_per_gpu": 1,
                                    "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "betas": [0.9, 0.99]}}})
    assert not isinstance(verdict, Unavailable)
    assert [i for i in verdict.issues if i.kind == "ignored-key"] == []


def test_parsing_leaves_deepspeed_logging_as_it_was() -> None:
    import logging

    logger = logging.getLogger("DeepSpeed")
    before = (list(logger.handlers), logger.propagate)
    judge_with_deepspeed({"zero_optimization": {"stage": 2, "cpu_offload": True}})
    assert (list(logger.handlers), logger.propagate) == before


def test_the_deepspeed_import_banner_stays_off_stdout(capfd: pytest.CaptureFixture[str]) -> None:
    from clusterkit.cli import main

    with contextlib.suppress(SystemExit):
        main(["config", "check", "--json", "tests/fixtures/dsconfig/plain_deepspeed_zero1.json", "--world-size", "16"])
    out = capfd.readouterr().out
    assert out.lstrip().startswith("{")
    import json

    doc = json.loads(out)
    assert doc["summary"]["ok"] is True
    assert any(f["check"] == "batch-arithmetic" and f["outcome"] == Outcome.PASS.value for f in doc["findings"])
