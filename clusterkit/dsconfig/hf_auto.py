"""What ``"auto"`` becomes: the HF Trainer's and Accelerate's fill-in, simulated offline.

Follows ``transformers.integrations.deepspeed.HfTrainerDeepSpeedConfig``: ``trainer_config_process``
(run when TrainingArguments are built) and ``trainer_config_finalize`` (run when the model and the
number of training steps are known). Each ``fill_match(key, value)`` replaces ``"auto"`` with the
TrainingArguments value, or, when the config holds a number instead, records a mismatch; any mismatch
ends the run with "Please correct the following DeepSpeed config values that mismatch
TrainingArguments values". ``fill_only`` replaces ``"auto"`` and never compares. A key whose parent
section is missing is neither filled nor compared.

transformers is not a clusterkit dependency: the defaults and flag syntax below follow
``TrainingArguments`` and ``HfArgumentParser`` of transformers 4.3x-4.5x.
"""

from __future__ import annotations

import argparse
import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from clusterkit.core.findings import KeyPath
from clusterkit.dsconfig.load import iter_leaves
from clusterkit.errors import UsageError

AUTO = "auto"
#: How AUTO_SOURCES says a runner leaves a key alone.
UNFILLED = "nothing"

#: Where each ``"auto"`` key gets its value: (HF Trainer source, Accelerate source).
AUTO_SOURCES: dict[str, tuple[str, str]] = {
    "train_micro_batch_size_per_gpu": ("--per_device_train_batch_size",
                                       "the batch size of the DataLoader given to accelerator.prepare"),
    "gradient_accumulation_steps": ("--gradient_accumulation_steps",
                                    "gradient_accumulation_steps in the accelerate config"),
    "train_batch_size": ("world size x --per_device_train_batch_size x --gradient_accumulation_steps",
                         "DataLoader batch size x gradient_accumulation_steps x num_processes"),
    "gradient_clipping": ("--max_grad_norm", "gradient_clipping in the accelerate config"),
    "optimizer.params.lr": ("--learning_rate", "DummyOptim(lr=...)"),
    "optimizer.params.betas": ("[--adam_beta1, --adam_beta2]", UNFILLED + " (DummyOptim carries lr and weight_decay)"),
    "optimizer.params.eps": ("--adam_epsilon", UNFILLED + " (DummyOptim carries lr and weight_decay)"),
    "optimizer.params.weight_decay": ("--weight_decay", "DummyOptim(weight_decay=...)"),
    "scheduler.params.warmup_min_lr": ("0 (no TrainingArguments)", "0"),
    "scheduler.params.warmup_max_lr": ("--learning_rate", "the optimizer's lr"),
    "scheduler.params.warmup_num_steps": ("--warmup_steps, or ceil(--warmup_ratio x training steps)",
                                          "DummyScheduler(warmup_num_steps=...)"),
    "scheduler.params.total_num_steps": ("the number of training steps (--max_steps, or epochs x steps "
                                         "per epoch)", "DummyScheduler(total_num_steps=...)"),
    "fp16.enabled": ("--fp16 or --fp16_full_eval", "mixed_precision == 'fp16'"),
    "bf16.enabled": ("--bf16 or --bf16_full_eval", "mixed_precision == 'bf16'"),
    "zero_optimization.reduce_bucket_size": ("model hidden_size^2", "model hidden_size^2"),
    "zero_optimization.stage3_prefetch_bucket_size": ("0.9 x model hidden_size^2 (ZeRO-3 only)",
                                                      "0.9 x model hidden_size^2"),
    "zero_optimization.stage3_param_persistence_threshold": ("10 x model hidden_size (ZeRO-3 only)",
                                                             "10 x model hidden_size"),
    "zero_optimization.stage3_gather_16bit_weights_on_model_save": (
        UNFILLED, "zero3_save_16bit_model in the accelerate config"),
}


@dataclass(frozen=True)
class TrainerArgs:
    """The TrainingArguments that feed ``"auto"``, with transformers' defaults; ``given`` were passed."""

    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: float = 5e-5
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    num_train_epochs: float = 3.0
    max_steps: int = -1
    warmup_steps: float = 0
    warmup_ratio: float = 0.0
    fp16: bool = False
    fp16_full_eval: bool = False
    bf16: bool = False
    bf16_full_eval: bool = False
    half_precision_backend: str = "auto"
    optim: str = "adamw_torch"
    adafactor: bool = False
    lr_scheduler_type: str = "linear"
    save_on_each_node: bool = False
    auto_find_batch_size: bool = False
    deepspeed: str | None = None
    given: frozenset[str] = frozenset()

    @property
    def num_training_steps(self) -> int | None:
        """Known offline only from ``--max_steps``; otherwise it depends on the dataset length."""
        return self.max_steps if self.max_steps > 0 else None

    def warmup_steps_for(self, total: int) -> int:
        """``TrainingArguments.get_warmup_steps``."""
        if self.warmup_steps >= 1:
            return int(self.warmup_steps)
        if 0 < self.warmup_steps < 1:  # newer transformers read a fraction as a ratio
            return math.ceil(total * self.warmup_steps)
        return math.ceil(total * self.warmup_ratio)


def _string_to_bool(text: str) -> bool:
    """transformers' ``string_to_bool``."""
    lowered = text.lower()
    if lowered in ("yes", "true", "t", "y", "1"):
        return True
    if lowered in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"truthy value expected, got {text!r}")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"trainer arguments after '--': {message}")


def parse_trainer_args(argv: Sequence[str]) -> TrainerArgs:
    """Read the TrainingArguments that matter here from a training command line; ignore the rest.

    Accepts ``--name value``, ``--name=value`` and the dashed spelling (``--per-device-train-batch-size``)
    as ``HfArgumentParser`` does; boolean flags take an optional true/false.
    """
    parser = _Parser(add_help=False, allow_abbrev=False)
    defaults = TrainerArgs()
    for name, value in vars(defaults).items():
        if name == "given":
            continue
        flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        if isinstance(value, bool):
            parser.add_argument(*flags, dest=name, type=_string_to_bool, nargs="?", const=True, default=None)
        elif name == "deepspeed":
            parser.add_argument(*flags, dest=name, default=None)
        else:
            parser.add_argument(*flags, dest=name, type=type(value), default=None)
    known, _rest = parser.parse_known_args(list(argv))
    given = {name: value for name, value in vars(known).items() if value is not None}
    return TrainerArgs(**given, given=frozenset(given))


# ------------------------------------------------------------------------------------- simulation


@dataclass(frozen=True)
class AutoFill:
    """An ``"auto"`` key and what it becomes; ``value`` None means it is only known at run time."""

    path: KeyPath
    value: Any
    source: str


@dataclass(frozen=True)
class Mismatch:
    """A number in the config that differs from what TrainingArguments say: HF raises for it."""

    path: KeyPath
    ds_value: Any
    hf_name: str
    hf_value: Any

    def hf_line(self) -> str:
        """The line HF prints for it (``- ds train_batch_size=256 vs hf train_batch_size (calculated)=64``)."""
        return f"- ds {'.'.join(self.path)}={self.ds_value} vs hf {self.hf_name}={self.hf_value}"


@dataclass
class HfSimulation:
    """The config as DeepSpeed will receive it from the HF Trainer, and how it got there."""

    config: dict[str, Any]
    fills: list[AutoFill] = field(default_factory=list)
    mismatches: list[Mismatch] = field(default_factory=list)
    runtime: list[AutoFill] = field(default_factory=list)

    def remaining_auto(self) -> list[KeyPath]:
        """Keys still ``"auto"`` that no known value or run-time fill will replace."""
        later = {fill.path for fill in self.runtime}
        return [path for path, value in iter_leaves(self.config) if value == AUTO and path not in later]


class _Filler:
    def __init__(self, sim: HfSimulation) -> None:
        self.sim = sim

    def node(self, long_key: str) -> tuple[dict[str, Any] | None, str]:
        """``find_config_node``: the dict holding the last part of a dotted key, if every parent exists."""
        *parents, key = long_key.split(".")
        node: Any = self.sim.config
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
            if node is None:
                return None, key
        return (node if isinstance(node, dict) else None), key

    def fill(self, long_key: str, hf_value: Any, hf_name: str, must_match: bool = True,
             source: str | None = None) -> None:
        """``fill_match``; an ``hf_value`` of None means "known only at run time": nothing to compare.

        ``hf_name`` is the name HF prints in a mismatch; ``source`` (default ``hf_name``) explains a fill.
        """
        node, key = self.node(long_key)
        if node is None:
            return
        path = tuple(long_key.split("."))
        if node.get(key) == AUTO:
            if hf_value is None:
                self.sim.runtime.append(AutoFill(path, None, source or hf_name))
            else:
                node[key] = hf_value
                self.sim.fills.append(AutoFill(path, hf_value, source or hf_name))
            return
        ds_value = node.get(key)
        if must_match and hf_value is not None and ds_value is not None and ds_value != hf_value:
            self.sim.mismatches.append(Mismatch(path, ds_value, hf_name, hf_value))


def simulate_hf_trainer(config: dict[str, Any], args: TrainerArgs, world_size: int | None,
                        hidden_size: int | None = None) -> HfSimulation:
    """Apply ``trainer_config_process`` and ``trainer_config_finalize`` to a copy of ``config``.

    ``world_size`` is HF's ``args.world_size`` (every rank); None when unknown, and then
    ``train_batch_size`` is left for run time. ``hidden_size`` comes from the model's config.json.
    """
    sim = HfSimulation(copy.deepcopy(config))
    f = _Filler(sim)
    micro, gas = args.per_device_train_batch_size, args.gradient_accumulation_steps
    must_match_batch = not args.auto_find_batch_size
    f.fill("train_micro_batch_size_per_gpu", micro, "per_device_train_batch_size", must_match_batch)
    f.fill("gradient_accumulation_steps", gas, "gradient_accumulation_steps")
    total = world_size * micro * gas if world_size is not None else None
    f.fill("train_batch_size", total, "train_batch_size (calculated)", must_match_batch,
           source=f"world size {world_size} x per_device_train_batch_size {micro} x gradient_accumulation_steps "
                  f"{gas}" if total is not None else
           "world size x per_device_train_batch_size x gradient_accumulation_steps")
    f.fill("gradient_clipping", args.max_grad_norm, "max_grad_norm")
    f.fill("optimizer.params.lr", args.learning_rate, "learning_rate")
    f.fill("optimizer.params.betas", [args.adam_beta1, args.adam_beta2], "adam_beta1+adam_beta2")
    f.fill("optimizer.params.eps", args.adam_epsilon, "adam_epsilon")
    f.fill("optimizer.params.weight_decay", args.weight_decay, "weight_decay")
    f.fill("scheduler.params.warmup_min_lr", 0, "0", must_match=False, source="HF's fixed 0")
    f.fill("scheduler.params.warmup_max_lr", args.learning_rate, "learning_rate")
    if args.save_on_each_node:
        sim.config.setdefault("checkpoint", {})["use_node_local_storage"] = True
    fp16 = args.fp16 or args.fp16_full_eval
    f.fill("fp16.enabled", fp16 and args.half_precision_backend != "apex",
           "fp16|fp16_full_eval+fp16_backend(amp)")
    f.fill("bf16.enabled", args.bf16 or args.bf16_full_eval, "bf16|bf16_full_eval")

    # trainer_config_finalize
    stage = _zero_stage(sim.config)
    hidden_name = f"hidden_size={hidden_size}" if hidden_size else "the model's hidden_size"
    square = hidden_size * hidden_size if hidden_size else None
    f.fill("zero_optimization.reduce_bucket_size", square, f"{hidden_name}^2", must_match=False)
    if stage == 3:
        f.fill("zero_optimization.stage3_prefetch_bucket_size", int(0.9 * square) if square else None,
               f"0.9 x {hidden_name}^2", must_match=False)
        f.fill("zero_optimization.stage3_param_persistence_threshold",
               10 * hidden_size if hidden_size else None, f"10 x {hidden_name}", must_match=False)
    steps = args.num_training_steps
    f.fill("scheduler.params.total_num_steps", steps, "num_training_steps (calculated)",
           source=f"--max_steps {steps}" if steps else "the number of training steps (epochs x dataset length)")
    warmup = args.warmup_steps_for(steps) if steps else (int(args.warmup_steps) if args.warmup_steps >= 1
                                                         else None)
    f.fill("scheduler.params.warmup_num_steps", warmup, "warmup_steps",
           source="warmup_steps" if "warmup_steps" in args.given else
           f"ceil(warmup_ratio {args.warmup_ratio} x {steps} steps)" if steps else "warmup_steps/warmup_ratio")
    return sim


def _zero_stage(config: dict[str, Any]) -> int:
    zero = config.get("zero_optimization")
    stage = zero.get("stage", -1) if isinstance(zero, dict) else -1
    return stage if isinstance(stage, int) else -1


def auto_paths(config: dict[str, Any]) -> list[KeyPath]:
    """Every key whose value is the string ``"auto"``."""
    return [path for path, value in iter_leaves(config) if value == AUTO]
