"""A short account of what a config will do on a given cluster (for ``config check`` and ``launch``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from clusterkit.dsconfig.hf_auto import auto_paths
from clusterkit.dsconfig.load import dotted
from clusterkit.dsconfig.topology import Parallelism, Topology, data_parallel_size


@dataclass(frozen=True)
class BatchPlan:
    """The three batch values as DeepSpeed will settle them (``_set_batch_related_parameters``)."""

    train_batch_size: int
    micro_batch_per_gpu: int
    gradient_accumulation_steps: int
    data_parallel_size: int

    @property
    def consistent(self) -> bool:
        return (self.micro_batch_per_gpu > 0 and self.gradient_accumulation_steps > 0 and self.train_batch_size
                == self.micro_batch_per_gpu * self.gradient_accumulation_steps * self.data_parallel_size)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def resolve_batch(config: dict[str, Any], data_parallel: int) -> BatchPlan | None:
    """Derive the missing batch values exactly as DeepSpeed does; None if neither size is given."""
    tb = _int(config.get("train_batch_size"))
    mb = _int(config.get("train_micro_batch_size_per_gpu"))
    gas = _int(config.get("gradient_accumulation_steps"))
    w = data_parallel
    if tb is not None and mb is not None and gas is not None:
        return BatchPlan(tb, mb, gas, w)
    if tb is not None and mb is not None:
        return BatchPlan(tb, mb, tb // mb // w, w)
    if tb is not None and gas is not None:
        return BatchPlan(tb, tb // w // gas, gas, w)
    if mb is not None and gas is not None:
        return BatchPlan(mb * gas * w, mb, gas, w)
    if tb is not None:
        return BatchPlan(tb, tb // w, 1, w)
    if mb is not None:
        return BatchPlan(mb * w, mb, 1, w)
    return None


@dataclass(frozen=True)
class ConfigSummary:
    """The facts about a config a launcher or a reader wants at a glance."""

    zero_stage: int
    precision: str
    offload_optimizer: str
    offload_param: str
    optimizer: str | None
    scheduler: str | None
    world_size: int | None
    batch: BatchPlan | None
    auto_keys: tuple[str, ...]

    def lines(self) -> list[str]:
        offload = [f"optimizer->{self.offload_optimizer}" if self.offload_optimizer != "none" else "",
                   f"params->{self.offload_param}" if self.offload_param != "none" else ""]
        parts = [f"ZeRO stage {self.zero_stage}", self.precision,
                 "offload " + ", ".join(p for p in offload if p) if any(offload) else "no offload"]
        lines = [", ".join(parts)]
        if self.batch is not None:
            b = self.batch
            mark = "" if b.consistent else "  (inconsistent: see batch-arithmetic)"
            lines.append(f"batch: {b.train_batch_size} = {b.micro_batch_per_gpu} per GPU x "
                         f"{b.gradient_accumulation_steps} accumulation x {b.data_parallel_size} ranks{mark}")
        lines.append(f"optimizer: {self.optimizer or 'from the training code'}; "
                     f"scheduler: {self.scheduler or 'from the training code'}")
        if self.auto_keys:
            lines.append(f"\"auto\": {', '.join(self.auto_keys)}")
        return lines


def _offload(config: dict[str, Any], kind: str) -> str:
    zero = config.get("zero_optimization")
    section = zero.get(kind) if isinstance(zero, dict) else None
    device = section.get("device") if isinstance(section, dict) else None
    return device if isinstance(device, str) else "none"


def summarize(config: dict[str, Any], topology: Topology | None = None,
              parallel: Parallelism | None = None) -> ConfigSummary:
    """Summarize a config (ideally the effective one, after the HF Trainer's fill-in)."""
    zero = config.get("zero_optimization")
    stage = zero.get("stage", 0) if isinstance(zero, dict) else 0

    def enabled(name: str) -> Any:
        section = config.get(name)
        return section.get("enabled") if isinstance(section, dict) else None

    fp16, bf16 = enabled("fp16"), enabled("bf16") if "bf16" in config else enabled("bfloat16")
    precision = "bf16" if bf16 is True else "fp16" if fp16 is True else \
        "precision \"auto\"" if "auto" in (fp16, bf16) else "fp32"
    world = topology.world_size if topology is not None else None
    batch = None
    if world is not None:
        dp = data_parallel_size(world, parallel or Parallelism())
        batch = resolve_batch(config, dp) if dp else None
    optimizer = config.get("optimizer")
    scheduler = config.get("scheduler")
    return ConfigSummary(
        zero_stage=stage if isinstance(stage, int) else 0,
        precision=precision,
        offload_optimizer=_offload(config, "offload_optimizer"),
        offload_param=_offload(config, "offload_param"),
        optimizer=optimizer.get("type") if isinstance(optimizer, dict) else None,
        scheduler=scheduler.get("type") if isinstance(scheduler, dict) else None,
        world_size=world,
        batch=batch,
        auto_keys=tuple(dotted(p) for p in auto_paths(config)),
    )
