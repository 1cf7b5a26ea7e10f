"""Model-state memory per GPU and per node for ZeRO 0-3 with and without offload, and what fits.

ZeRO-2 and ZeRO-3 use the formulas of DeepSpeed's own estimators
(``deepspeed.runtime.zero.stage_1_and_2.estimate_zero2_model_states_mem_needs`` and
``deepspeed.runtime.zero.stage3.estimate_zero3_model_states_mem_needs``), copied so that a machine
without DeepSpeed can run them; the tests prove the numbers equal DeepSpeed's. ZeRO-0, ZeRO-1 and the
NVMe row are clusterkit's own, in the same byte accounting (per parameter: 2 bytes of 16-bit weights,
2 of 16-bit gradients, 4 of fp32 gradients, 4 of fp32 master weights, 8 of Adam moments):

- ZeRO-0 (no partitioning): every GPU holds all 20 bytes per parameter;
- ZeRO-1 (optimizer states partitioned): 2 + 2 bytes per parameter, plus 16 / (number of GPUs);
- NVMe (ZeRO-3, params and optimizer to NVMe): GPU as ZeRO-3 full offload; the 18 bytes per parameter
  (x1.5) go to each node's NVMe instead of its RAM; CPU needs only swap buffers (not estimated).

All numbers are model states only: activations, CUDA context and NCCL buffers come on top, hence the
GPU headroom. The CPU figure is per node: every rank of a node shares its RAM.
"""

from __future__ import annotations

from dataclasses import dataclass

DEEPSPEED = "DeepSpeed"
CLUSTERKIT = "clusterkit"


def zero2_model_states_mem_needs(total_params: int, num_gpus_per_node: int = 1, num_nodes: int = 1,
                                 cpu_offload: bool = True, additional_buffer_factor: float = 1.5
                                 ) -> tuple[int, int]:
    """DeepSpeed's ``estimate_zero2_model_states_mem_needs``: (CPU bytes per node, GPU bytes per GPU)."""
    total_gpus = num_nodes * num_gpus_per_node
    if cpu_offload:
        gpu_mem = 2 * total_params
        cpu_mem = total_params * max(4 * total_gpus, 16) * additional_buffer_factor
    else:
        gpu_mem = 2 * total_params + int(18 * total_params / total_gpus)
        cpu_mem = total_params * 4 * num_gpus_per_node * additional_buffer_factor
    return int(cpu_mem), int(gpu_mem)


def zero3_model_states_mem_needs(total_params: int, largest_layer_params: int, num_gpus_per_node: int = 1,
                                 num_nodes: int = 1, cpu_offload: bool = True, cpu_offload_params: bool = True,
                                 zero_init: bool = True, additional_buffer_factor: float = 1.5
                                 ) -> tuple[int, int, int]:
    """DeepSpeed's ``estimate_zero3_model_states_mem_needs``: (CPU per node, GPU per GPU, largest layer)."""
    total_gpus = num_nodes * num_gpus_per_node
    gpus_factor = 1 / num_nodes
    largest_layer_memory = 4 * largest_layer_params
    if cpu_offload:
        if cpu_offload_params:
            gpu_mem = largest_layer_memory
            if zero_init:
                cpu_mem = total_params * 18 * gpus_factor * additional_buffer_factor
            else:
                cpu_mem = total_params * max(4 * num_gpus_per_node, 18 * gpus_factor) * additional_buffer_factor
        else:
            gpu_mem = largest_layer_memory + int(2 * total_params / total_gpus)
            if zero_init:
                cpu_mem = total_params * 16 * gpus_factor * additional_buffer_factor
            else:
                cpu_mem = total_params * max(4 * num_gpus_per_node, 16 * gpus_factor) * additional_buffer_factor
    else:
        gpu_mem = largest_layer_memory + int(18 * total_params / total_gpus)
        if zero_init:
            cpu_mem = largest_layer_params * 4 * num_gpus_per_node * additional_buffer_factor
        else:
            cpu_mem = total_params * 4 * num_gpus_per_node * additional_buffer_factor
    return int(cpu_mem), int(gpu_mem), largest_layer_memory


@dataclass(frozen=True)
class Strategy:
    """One ZeRO stage and offload setting, named as in the DeepSpeed config."""

    key: str
    stage: int
    offload_optimizer: str
    offload_param: str
    zero_init: bool | None
    formula: str

    @property
    def label(self) -> str:
        parts = [f"ZeRO-{self.stage}"]
        if self.offload_optimizer != "none":
            parts.append(f"offload_optimizer={self.offload_optimizer}")
        if self.offload_param != "none":
            parts.append(f"offload_param={self.offload_param}")
        label = " + ".join(parts)
        return label + " (no zero.Init)" if self.zero_init is False else label


#: Cheapest (fastest) first, as DeepSpeed's and HF's docs tell users to try them. The ZeRO-3 rows
#: without zero.Init come right after their zero.Init twin: same speed, more CPU RAM at load.
STRATEGIES: tuple[Strategy, ...] = (
    Strategy("zero0", 0, "none", "none", None, CLUSTERKIT),
    Strategy("zero1", 1, "none", "none", None, CLUSTERKIT),
    Strategy("zero2", 2, "none", "none", None, DEEPSPEED),
    Strategy("zero2-offload-optimizer", 2, "cpu", "none", None, DEEPSPEED),
    Strategy("zero3", 3, "none", "none", True, DEEPSPEED),
    Strategy("zero3-no-zero-init", 3, "none", "none", False, DEEPSPEED),
    Strategy("zero3-offload-optimizer", 3, "cpu", "none", True, DEEPSPEED),
    Strategy("zero3-offload-optimizer-no-zero-init", 3, "cpu", "none", False, DEEPSPEED),
    Strategy("zero3-offload-all", 3, "cpu", "cpu", True, DEEPSPEED),
    Strategy("zero3-offload-all-no-zero-init", 3, "cpu", "cpu", False, DEEPSPEED),
    Strategy("zero3-nvme", 3, "nvme", "nvme", True, CLUSTERKIT),
)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one strategy needs: per GPU, per node's RAM (None: not estimated) and per node's NVMe."""

    strategy: Strategy
    gpu_bytes: int
    cpu_bytes: int | None
    nvme_bytes: int


def estimate_all(total_params: int, largest_layer_params: int, num_nodes: int, num_gpus_per_node: int,
                 buffer_factor: float = 1.5) -> list[MemoryEstimate]:
    """Every strategy's model-state memory for a model on ``num_nodes`` x ``num_gpus_per_node`` GPUs."""
    b, layer = total_params, largest_layer_params
    total_gpus = num_nodes * num_gpus_per_node
    load_cpu = int(b * 4 * num_gpus_per_node * buffer_factor)  # each rank loads the fp32 model on CPU
    rows: list[MemoryEstimate] = []
    for s in STRATEGIES:
        if s.key == "zero0":
            rows.append(MemoryEstimate(s, 2 * b + 18 * b, load_cpu, 0))
        elif s.key == "zero1":
            rows.append(MemoryEstimate(s, 4 * b + int(16 * b / total_gpus), load_cpu, 0))
        elif s.stage == 2:
            cpu, gpu = zero2_model_states_mem_needs(b, num_gpus_per_node, num_nodes,
                                                    s.offload_optimizer == "cpu", buffer_factor)
            rows.append(MemoryEstimate(s, gpu, cpu, 0))
        elif s.key == "zero3-nvme":
            rows.append(MemoryEstimate(s, 4 * layer, None, int(b * 18 / num_nodes * buffer_factor)))
        else:
            cpu, gpu, _ = zero3_model_states_mem_needs(b, layer, num_gpus_per_node, num_nodes,
                                                       s.offload_optimizer == "cpu", s.offload_param == "cpu",
                                                       bool(s.zero_init), buffer_factor)
            rows.append(MemoryEstimate(s, gpu, cpu, 0))
    return rows


@dataclass(frozen=True)
class Capacity:
    """What the cluster offers: the smallest GPU, and each node's MemAvailable (None: unknown)."""

    gpu_bytes: int | None
    node_mem_available: dict[str, int | None]
    gpu_headroom: float = 0.2

    @property
    def usable_gpu_bytes(self) -> int | None:
        return None if self.gpu_bytes is None else int(self.gpu_bytes * (1 - self.gpu_headroom))


@dataclass(frozen=True)
class Verdict:
    """Whether one strategy fits: ``gpu_fits``/``cpu_fits`` are None when the capacity is unknown."""

    estimate: MemoryEstimate
    gpu_fits: bool | None
    cpu_fits: bool | None
    cpu_short_hosts: tuple[str, ...]

    @property
    def fits(self) -> bool | None:
        if self.gpu_fits is False or self.cpu_fits is False:
            return False
        if self.gpu_fits is None or self.cpu_fits is None:
            return None
        return True


def judge(estimates: list[MemoryEstimate], capacity: Capacity) -> list[Verdict]:
    """Set each estimate against the GPUs and every node's free RAM."""
    usable = capacity.usable_gpu_bytes
    verdicts = []
    for e in estimates:
        gpu_fits = None if usable is None else e.gpu_bytes <= usable
        short: list[str] = []
        cpu_fits: bool | None = True
        if e.cpu_bytes is not None:
            known = {h: m for h, m in capacity.node_mem_available.items() if m is not None}
            short = [h for h, m in known.items() if e.cpu_bytes > m]
            cpu_fits = False if short else (True if known else None)
        verdicts.append(Verdict(e, gpu_fits, cpu_fits, tuple(short)))
    return verdicts


def recommend(verdicts: list[Verdict]) -> Verdict | None:
    """The first strategy in DeepSpeed's documented order that surely fits (None if none does)."""
    return next((v for v in verdicts if v.fits is True), None)


@dataclass(frozen=True)
class MemoryPlan:
    """Estimates for one model on one cluster, judged, with the recommendation and its warnings."""

    total_params: int
    largest_layer_params: int
    num_nodes: int
    num_gpus_per_node: int
    capacity: Capacity
    verdicts: tuple[Verdict, ...]
    recommended: Verdict | None
    warnings: tuple[str, ...]
    notes: tuple[str, ...]


GIB = 2**30


def gib(value: int | None) -> str:
    return "?" if value is None else f"{value / GIB:,.1f} GiB"


def plan_memory(total_params: int, largest_layer_params: int, num_nodes: int, num_gpus_per_node: int,
                capacity: Capacity, buffer_factor: float = 1.5, notes: tuple[str, ...] = ()) -> MemoryPlan:
    """Estimate every strategy, judge it against ``capacity`` and pick the cheapest that fits."""
    verdicts = judge(estimate_all(total_params, largest_layer_params, num_nodes, num_gpus_per_node,
                                  buffer_factor), capacity)
    best = recommend(verdicts)
    warnings: list[str] = []
    short = [v for v in verdicts if v.estimate.strategy.offload_optimizer == "cpu" and v.gpu_fits is not False
             and v.cpu_short_hosts]
    if short:
        hosts = sorted({h for v in short for h in v.cpu_short_hosts})
        free = ", ".join(f"{h} {gib(capacity.node_mem_available.get(h))}" for h in hosts)
        needs = "; ".join(f"{v.estimate.strategy.label} needs {gib(v.estimate.cpu_bytes)}" for v in short)
        warnings.append(f"CPU offload exceeds the free RAM (MemAvailable) of {free}: {needs} per node; the "
                        "kernel's OOM killer would end the job with return code -9 and no traceback")
    if best is not None and best.estimate.nvme_bytes:
        warnings.append(f"NVMe offload needs about {gib(best.estimate.nvme_bytes)} free under nvme_path on "
                        "every node, plus libaio (see `clusterkit config check`)")
    if best is None:
        best = next((v for v in verdicts if v.gpu_fits is True and v.cpu_fits is None), None)
        if best is not None:
            warnings.append("free CPU RAM unknown: the recommendation assumes each node has "
                            f"{gib(best.estimate.cpu_bytes)} available")
    if capacity.gpu_bytes is None:
        warnings.append("GPU memory unknown (no --facts, no local GPU, no --gpu-memory): nothing can be "
                        "recommended")
    elif best is None:
        warnings.append("no strategy fits: add nodes, use GPUs with more memory, or train a smaller model")
    return MemoryPlan(total_params, largest_layer_params, num_nodes, num_gpus_per_node, capacity,
                      tuple(verdicts), best, tuple(warnings), notes)
