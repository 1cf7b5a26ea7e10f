"""Precision: fp16 vs bf16, bf16 on GPUs without it, and the config against --fp16/--bf16."""

from __future__ import annotations

from collections.abc import Iterator

from clusterkit.core.findings import NotApplicable, Problem, Severity
from clusterkit.dsconfig.rules import CheckInput, Runner, rule
from clusterkit.node.facts import Unavailable

BF16_MIN_COMPUTE_CAPABILITY = (8, 0)  # Ampere; torch.cuda.is_bf16_supported() is False below it


def _bf16_key(check: CheckInput) -> str:
    return "bfloat16" if "bf16" not in check.effective and "bfloat16" in check.effective else "bf16"


@rule("fp16-and-bf16", Severity.ERROR, ["precision"],
      why="DeepSpeed asserts 'bfloat16 and fp16 modes cannot be simultaneously enabled'",
      fix="enable only one of fp16.enabled and bf16.enabled")
def fp16_and_bf16(check: CheckInput) -> Iterator[Problem]:
    """fp16 and bf16 are not both enabled."""
    if check.enabled("fp16") and check.enabled("bf16"):
        yield Problem("fp16.enabled and bf16.enabled are both true: DeepSpeed stops with 'bfloat16 and fp16 "
                    "modes cannot be simultaneously enabled'", path=("fp16", "enabled"),
                    fix="set fp16.enabled to false for bf16 (Ampere or newer), or bf16.enabled to false")


def _capability(text: str) -> tuple[int, int] | None:
    major, _, minor = text.partition(".")
    if major.isdigit() and (minor.isdigit() or not minor):
        return int(major), int(minor or 0)
    return None


@rule("bf16-unsupported-gpu", Severity.ERROR, ["precision", "gpu"],
      why="bf16 needs compute capability 8.0 (Ampere) or newer; DeepSpeed stops with 'Type bf16 is not "
          "supported on your device.'",
      fix="use fp16 on these GPUs (set bf16.enabled false and fp16.enabled true)")
def bf16_unsupported_gpu(check: CheckInput) -> Iterator[Problem]:
    """bf16 is only enabled on GPUs that support it (compute capability >= 8.0)."""
    if not check.enabled("bf16"):
        raise NotApplicable("bf16 is not enabled")
    resources = check.resources
    if isinstance(resources, Unavailable):
        raise NotApplicable(f"GPU facts unavailable: {resources.reason}")
    found: list[Problem] = []
    unknown: list[str] = []
    checked = 0
    for host, node in resources.nodes.items():
        if isinstance(node.gpus, Unavailable):
            unknown.append(f"{host}: {node.gpus.reason}")
            continue
        for gpu in node.gpus:
            cap = gpu.compute_capability
            parsed = _capability(cap) if isinstance(cap, str) else None
            if parsed is None:
                unknown.append(f"{host} GPU {gpu.index}: compute capability {cap}")
                continue
            checked += 1
            if parsed < BF16_MIN_COMPUTE_CAPABILITY:
                found.append(Problem(f"bf16.enabled is true but {host} GPU {gpu.index} ({gpu.name}) has "
                                   f"compute capability {cap} < 8.0: DeepSpeed stops with 'Type bf16 is not "
                                   "supported on your device.'", path=(_bf16_key(check), "enabled"), host=host))
    if not checked:
        raise NotApplicable("compute capability unknown (" + "; ".join(unknown[:3] or ["no GPUs"]) + ")")
    yield from found
    for reason in unknown:
        yield Problem(f"could not check bf16 support: {reason}", severity=Severity.INFO)


@rule("precision-flag-without-section", Severity.WARNING, ["precision", "hf"],
      why="the HF Trainer fills and compares fp16.enabled/bf16.enabled only when the section exists; "
          "without it, whether --fp16/--bf16 take effect depends on the Accelerate version",
      fix="add \"fp16\": {\"enabled\": \"auto\"} and \"bf16\": {\"enabled\": \"auto\"} to the config")
def precision_flag_without_section(check: CheckInput) -> Iterator[Problem]:
    """--fp16/--bf16 on the trainer command line have a config section to land in."""
    if check.runner is not Runner.HF_TRAINER or check.trainer is None:
        raise NotApplicable("no HF Trainer arguments after '--'")
    args = check.trainer
    wanted = [("fp16", args.fp16 or args.fp16_full_eval), ("bf16", args.bf16 or args.bf16_full_eval)]
    for section, flag in wanted:
        present = section in check.config.data or (section == "bf16" and "bfloat16" in check.config.data)
        if flag and not present:
            yield Problem(f"--{section} is passed but the config has no \"{section}\" section: the HF Trainer "
                        f"cannot fill {section}.enabled; recent Accelerate adds the section for you, older "
                        f"releases run DeepSpeed in fp32 and the flag does nothing",
                        fix=f"add \"{section}\": {{\"enabled\": \"auto\"}}")
