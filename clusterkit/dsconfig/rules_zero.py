"""ZeRO: offload against the stage, NVMe needs, ZeRO++ groups, saving ZeRO-3 weights, checkpoints."""

from __future__ import annotations

from collections.abc import Iterator

from clusterkit.core.findings import NotApplicable, Problem, Severity
from clusterkit.dsconfig.rules import CheckInput, SharedFs, rule, whole_number
from clusterkit.node.facts import Unavailable

Z = "zero_optimization"


@rule("offload-param-needs-stage3", Severity.WARNING, ["zero", "offload"],
      why="only ZeRO-3 partitions parameters, so only it can offload them; DeepSpeed ignores offload_param "
          "at stages 0-2 without a word and the GPUs hold the full model",
      fix="set zero_optimization.stage to 3, or remove offload_param")
def offload_param_needs_stage3(check: CheckInput) -> Iterator[Problem]:
    """offload_param is only set with ZeRO stage 3."""
    device = check.offload_device("offload_param")
    stage = check.zero_stage()
    if device != "none" and stage != 3:
        yield Problem(f"{Z}.offload_param.device is {device!r} but {Z}.stage is {stage}: nothing is offloaded",
                    path=(Z, "offload_param"), fix=f"set {Z}.stage to 3, or remove {Z}.offload_param")


@rule("offload-optimizer-needs-zero", Severity.ERROR, ["zero", "offload"],
      why="with ZeRO off (stage 0) there is no partitioned optimizer to move to the CPU: DeepSpeed builds "
          "its CPU Adam around GPU parameters and it fails at the first step ('CPUAdam param is on cuda:0 "
          "and must be 'cpu''), or a client optimizer is refused",
      fix="set zero_optimization.stage to 1, 2 or 3 (DeepSpeed 0.19 offloads the optimizer at every "
          "stage >= 1), or remove offload_optimizer")
def offload_optimizer_needs_zero(check: CheckInput) -> Iterator[Problem]:
    """offload_optimizer is only set with ZeRO stage 1, 2 or 3."""
    device = check.offload_device("offload_optimizer")
    if device != "none" and check.zero_stage() == 0:
        yield Problem(f"{Z}.offload_optimizer.device is {device!r} but ZeRO is off ({Z}.stage 0)",
                    path=(Z, "offload_optimizer"), fix=f"set {Z}.stage to 2 (or 3), or remove offload_optimizer")


@rule("nvme-offload-path", Severity.ERROR, ["zero", "offload", "nvme"],
      why="NVMe offload swaps tensors to files under nvme_path; without it there is nowhere to write",
      fix="set nvme_path to a directory on a local NVMe drive that exists on every node")
def nvme_offload_path(check: CheckInput) -> Iterator[Problem]:
    """NVMe offload names an nvme_path."""
    for kind in ("offload_param", "offload_optimizer"):
        if check.offload_device(kind) == "nvme" and not check.value(Z, kind, "nvme_path"):
            yield Problem(f"{Z}.{kind}.device is \"nvme\" but {Z}.{kind}.nvme_path is not set", path=(Z, kind),
                        fix=f"set {Z}.{kind}.nvme_path to a local NVMe directory, e.g. \"/local_nvme\"")


@rule("nvme-offload-libaio", Severity.ERROR, ["zero", "offload", "nvme"],
      why="NVMe offload runs DeepSpeed's async_io op, which needs libaio on every node ('async_io "
          "requires the dev libaio .so object and headers')",
      fix="apt-get install libaio-dev (yum install libaio-devel) on every node, then check ds_report")
def nvme_offload_libaio(check: CheckInput) -> Iterator[Problem]:
    """libaio is present wherever NVMe offload will run."""
    uses_nvme = any(check.offload_device(kind) == "nvme" for kind in ("offload_param", "offload_optimizer"))
    if not uses_nvme:
        raise NotApplicable("no NVMe offload in the config")
    resources = check.resources
    if isinstance(resources, Unavailable):
        raise NotApplicable(f"node facts unavailable: {resources.reason}")
    known = 0
    for host, node in resources.nodes.items():
        if isinstance(node.libaio, Unavailable):
            yield Problem(f"cannot tell whether {host} has libaio: {node.libaio.reason}", host=host,
                        severity=Severity.INFO)
            continue
        known += 1
        if not node.libaio:
            yield Problem(f"NVMe offload is configured but {host} lacks libaio (DeepSpeed's async_io op is "
                        f"not compatible there; checked via {resources.source})", path=(Z,), host=host)
    if not known:
        raise NotApplicable("libaio unknown on every node")


@rule("zeropp-hpz-partition-size", Severity.WARNING, ["zero", "zero++"],
      why="ZeRO++ hierarchical partitioning (hpZ) keeps a secondary copy of the weights inside each "
          "node; its group size should be the number of GPUs per node",
      fix="set zero_hpz_partition_size to the GPUs per node (slots in the hostfile)")
def zeropp_hpz_partition_size(check: CheckInput) -> Iterator[Problem]:
    """zero_hpz_partition_size equals the GPUs per node."""
    size = check.value(Z, "zero_hpz_partition_size")
    if not whole_number(size) or size <= 1:
        raise NotApplicable("ZeRO++ hpZ not enabled (zero_hpz_partition_size <= 1)")
    path = (Z, "zero_hpz_partition_size")
    if check.zero_stage() != 3:
        yield Problem(f"{Z}.zero_hpz_partition_size is {size} but hpZ is part of ZeRO-3 and the stage is "
                    f"{check.zero_stage()}: it has no effect", path=path, fix=f"set {Z}.stage to 3, or remove it")
        return
    if check.topology is None:
        raise NotApplicable("GPUs per node unknown: pass --hostfile")
    per_node = check.topology.gpus_per_node
    if per_node is None:
        yield Problem(f"nodes run different GPU counts ({check.topology.describe()}); hpZ groups of {size} "
                    "cannot match every node", path=path, fix="use the same number of slots on every node")
    elif size != per_node:
        yield Problem(f"{Z}.zero_hpz_partition_size is {size} but each node runs {per_node} GPUs "
                    f"({check.topology.source})", path=path, fix=f"set {Z}.zero_hpz_partition_size to {per_node}")
    if check.topology.world_size % size:
        yield Problem(f"world size {check.topology.world_size} is not divisible by zero_hpz_partition_size "
                    f"{size}", path=path, fix=f"set {Z}.zero_hpz_partition_size to a divisor of the world size",
                    severity=Severity.WARNING)


@rule("zero3-save-16bit-weights", Severity.WARNING, ["zero", "checkpoint"],
      why="ZeRO-3 shards the weights; without gathering them, save_model()/save_16bit_model() write a "
          "tiny file with empty tensors ('Did not save the model ... stage3_gather_16bit_weights_on_model_"
          "save is False')",
      fix="set zero_optimization.stage3_gather_16bit_weights_on_model_save to true, or convert the "
          "checkpoint afterwards with zero_to_fp32.py")
def zero3_save_16bit_weights(check: CheckInput) -> Iterator[Problem]:
    """ZeRO-3 configs gather 16-bit weights when the model is saved."""
    if check.zero_stage() != 3:
        raise NotApplicable("not ZeRO stage 3")
    zero = check.section(Z)
    value = next((zero[k] for k in ("stage3_gather_16bit_weights_on_model_save",
                                    "gather_16bit_weights_on_model_save",
                                    "stage3_gather_fp16_weights_on_model_save") if k in zero), None)
    if value is True:
        return
    shown = "is not set (default false)" if value is None else f"is {value!r}"
    note = " (\"auto\" is false unless Accelerate's zero3_save_16bit_model is on)" if value == "auto" else ""
    yield Problem(f"{Z}.stage3_gather_16bit_weights_on_model_save {shown}{note}: the saved model file will "
                "be nearly empty", path=(Z, "stage3_gather_16bit_weights_on_model_save"),
                fix=f"set {Z}.stage3_gather_16bit_weights_on_model_save to true (or run zero_to_fp32.py on "
                    "the checkpoint)")


@rule("multinode-checkpoint-storage", Severity.WARNING, ["checkpoint", "multinode"],
      why="each node writes its own ZeRO shards; resuming needs every shard visible to every node "
          "('The following zero checkpoints paths are missing')",
      fix="save to a shared filesystem, or set checkpoint.use_node_local_storage and gather the shards")
def multinode_checkpoint_storage(check: CheckInput) -> Iterator[Problem]:
    """Multi-node runs save checkpoints where every node can read them back."""
    if check.topology is None or check.topology.nodes < 2:
        raise NotApplicable("single node (or no hostfile)")
    if check.value("checkpoint", "use_node_local_storage") is True:
        return
    if check.shared_fs is SharedFs.YES:
        return
    path = ("checkpoint", "use_node_local_storage")
    if check.shared_fs is SharedFs.NO:
        yield Problem(f"{check.topology.nodes} nodes without a shared filesystem and without "
                    "checkpoint.use_node_local_storage: shards saved on each node cannot be loaded back",
                    path=path, fix="set \"checkpoint\": {\"use_node_local_storage\": true} (HF: "
                              "--save_on_each_node), or save to a shared filesystem")
    else:
        yield Problem(f"{check.topology.nodes} nodes: is the output directory on a filesystem every node "
                    "shares? (--shared-fs yes|no to say)", path=path, severity=Severity.INFO,
                    fix="use a shared output directory, or set checkpoint.use_node_local_storage")
