"""The HF Trainer's "auto" fill-in, simulated: values, mismatches, and the trainer command line."""

from __future__ import annotations

import pytest

from clusterkit.dsconfig.hf_auto import TrainerArgs, parse_trainer_args, simulate_hf_trainer
from clusterkit.errors import UsageError


def test_trainer_args_accept_hf_spellings_and_ignore_the_script_and_unknown_flags() -> None:
    args = parse_trainer_args(["train.py", "--model_name_or_path", "gpt2", "--per-device-train-batch-size", "4",
                               "--gradient_accumulation_steps=8", "--bf16", "--fp16", "false",
                               "--learning_rate", "2e-5", "--deepspeed", "ds.json"])
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (4, 8)
    assert (args.bf16, args.fp16, args.learning_rate, args.deepspeed) == (True, False, 2e-5, "ds.json")
    assert args.given == {"per_device_train_batch_size", "gradient_accumulation_steps", "bf16", "fp16",
                          "learning_rate", "deepspeed"}


def test_trainer_defaults_are_transformers_defaults() -> None:
    args = parse_trainer_args([])
    assert (args.per_device_train_batch_size, args.learning_rate, args.max_grad_norm, args.adam_beta2) == \
        (8, 5e-5, 1.0, 0.999)


def test_a_bad_trainer_value_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="per_device_train_batch_size"):
        parse_trainer_args(["--per_device_train_batch_size", "four"])


def test_auto_values_become_the_trainer_values() -> None:
    config = {"train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto",
              "gradient_accumulation_steps": "auto", "gradient_clipping": "auto",
              "optimizer": {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto",
                                                        "weight_decay": "auto"}},
              "scheduler": {"type": "WarmupDecayLR", "params": {"warmup_min_lr": "auto", "warmup_max_lr": "auto",
                                                                "warmup_num_steps": "auto",
                                                                "total_num_steps": "auto"}},
              "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"},
              "zero_optimization": {"stage": 3, "reduce_bucket_size": "auto",
                                    "stage3_prefetch_bucket_size": "auto",
                                    "stage3_param_persistence_threshold": "auto"}}
    args = parse_trainer_args(["--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "4",
                               "--bf16", "--max_steps", "500", "--warmup_ratio", "0.1", "--weight_decay", "0.1"])
    sim = simulate_hf_trainer(config, args, world_size=16, hidden_size=4096)
    out = sim.config
    assert (out["train_batch_size"], out["train_micro_batch_size_per_gpu"], out["gradient_accumulation_steps"]) \
        == (128, 2, 4)
    assert out["optimizer"]["params"] == {"lr": 5e-5, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.1}
    assert out["scheduler"]["params"] == {"warmup_min_lr": 0, "warmup_max_lr": 5e-5, "warmup_num_steps": 50,
                                          "total_num_steps": 500}
    assert (out["bf16"]["enabled"], out["fp16"]["enabled"]) == (True, False)
    assert out["zero_optimization"]["reduce_bucket_size"] == 4096 * 4096
    assert out["zero_optimization"]["stage3_prefetch_bucket_size"] == int(0.9 * 4096 * 4096)
    assert out["zero_optimization"]["stage3_param_persistence_threshold"] == 40960
    assert sim.mismatches == [] and sim.remaining_auto() == []
    assert config["train_batch_size"] == "auto"  # the input is left alone


def test_values_known_only_at_run_time_stay_auto_without_complaint() -> None:
    config = {"train_batch_size": "auto", "scheduler": {"params": {"total_num_steps": "auto"}},
              "zero_optimization": {"stage": 2, "reduce_bucket_size": "auto"}}
    sim = simulate_hf_trainer(config, TrainerArgs(), world_size=None)
    assert {fill.path for fill in sim.runtime} == {("train_batch_size",), ("scheduler", "params", "total_num_steps"),
                                                   ("zero_optimization", "reduce_bucket_size")}
    assert sim.remaining_auto() == []


def test_numbers_that_disagree_are_listed_as_hf_prints_them() -> None:
    config = {"train_batch_size": 256, "train_micro_batch_size_per_gpu": 4, "gradient_clipping": 0.5,
              "optimizer": {"params": {"lr": 3e-4}}}
    sim = simulate_hf_trainer(config, parse_trainer_args(["--per_device_train_batch_size", "4"]), world_size=8)
    assert [m.hf_line() for m in sim.mismatches] == [
        "- ds train_batch_size=256 vs hf train_batch_size (calculated)=32",
        "- ds gradient_clipping=0.5 vs hf max_grad_norm=1.0",
        "- ds optimizer.params.lr=0.0003 vs hf learning_rate=5e-05",
    ]


def test_auto_find_batch_size_skips_the_batch_comparison_like_hf() -> None:
    config = {"train_batch_size": 256, "train_micro_batch_size_per_gpu": 4}
    sim = simulate_hf_trainer(config, parse_trainer_args(["--auto_find_batch_size"]), world_size=8)
    assert sim.mismatches == []


def test_keys_under_a_missing_section_are_neither_filled_nor_compared() -> None:
    sim = simulate_hf_trainer({"train_micro_batch_size_per_gpu": 8}, TrainerArgs(), world_size=8)
    assert sim.fills == [] and sim.mismatches == [] and "optimizer" not in sim.config


def test_save_on_each_node_turns_on_node_local_checkpoints() -> None:
    sim = simulate_hf_trainer({}, parse_trainer_args(["--save_on_each_node"]), world_size=8)
    assert sim.config["checkpoint"] == {"use_node_local_storage": True}
