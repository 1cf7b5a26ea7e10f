"""Optimizer and scheduler: names DeepSpeed knows, their parameters, CPU Adam with offload, HF pairing.

The classes and their parameters come from the installed DeepSpeed (and torch): the same lookup
``DeepSpeedEngine._configure_basic_optimizer`` and ``_scheduler_from_config`` do.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from clusterkit.core.findings import NotApplicable, Problem, Severity
from clusterkit.dsconfig.introspect import deepspeed_config_module, suggest
from clusterkit.dsconfig.rules import CheckInput, Runner, rule
from clusterkit.node.facts import Unavailable

#: Parameters DeepSpeed pops before constructing an Adam-type optimizer (engine.py).
_ADAM_POPPED = ("torch_adam", "adam_w_mode", "fp32_optimizer_states", "foreach")
_CONSTRUCTOR_ARGS = ("self", "params", "model_params", "optimizer")


@dataclass(frozen=True)
class OptimizerChoice:
    """The class DeepSpeed will build for ``optimizer.type`` and the keys its constructor takes."""

    cls: type | None
    accepted: frozenset[str]
    note: str = ""


def _ds() -> Any:
    module = deepspeed_config_module()
    if isinstance(module, Unavailable):
        raise NotApplicable(module.reason)
    return module


def _parameters(cls: type) -> set[str]:
    params = inspect.signature(cls.__init__).parameters  # type: ignore[misc]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return {"*"}
    return {name for name in params if name not in _CONSTRUCTOR_ARGS}


def _class(module: str, name: str) -> type:
    import importlib

    found = getattr(importlib.import_module(module), name)
    assert isinstance(found, type)
    return found


def deepspeed_optimizer(type_name: str, cpu_offload: bool, params: dict[str, Any]) -> OptimizerChoice | None:
    """What ``_configure_basic_optimizer`` builds for a config ``optimizer.type``; None if unknown."""
    import torch

    module = _ds()
    name = type_name.lower() if type_name.lower() in module.DEEPSPEED_OPTIMIZERS else type_name
    cls: type
    if name in ("adam", "adamw"):
        if params.get("torch_adam") is True:
            cls = torch.optim.AdamW if name == "adamw" or params.get("adam_w_mode", True) else torch.optim.Adam
        else:
            cls = _class("deepspeed.ops.adam", "DeepSpeedCPUAdam" if cpu_offload else "FusedAdam")
        return OptimizerChoice(cls, frozenset(_parameters(cls) | set(_ADAM_POPPED)))
    if name == "adagrad":
        cls = _class("deepspeed.ops.adagrad", "DeepSpeedCPUAdagrad") if cpu_offload else torch.optim.Adagrad
        return OptimizerChoice(cls, frozenset(_parameters(cls)))
    if name == "lamb":
        cls = _class("deepspeed.ops.lamb", "FusedLamb")
        return OptimizerChoice(cls, frozenset(_parameters(cls)), "FusedLamb has no CPU implementation")
    if name == "lion":
        cls = _class("deepspeed.ops.lion", "DeepSpeedCPULion" if cpu_offload else "FusedLion")
        return OptimizerChoice(cls, frozenset(_parameters(cls)))
    if name in module.DEEPSPEED_OPTIMIZERS:  # mup's MuAdam/MuSGD, Muon: parameters not checked
        return OptimizerChoice(None, frozenset({"*"}), f"{name} is built outside DeepSpeed's op set")
    cls_or_none = getattr(torch.optim, type_name, None)
    if isinstance(cls_or_none, type):
        return OptimizerChoice(cls_or_none, frozenset(_parameters(cls_or_none)))
    return None


def _optimizer_names() -> list[str]:
    import torch

    names = list(_ds().DEEPSPEED_OPTIMIZERS)
    return names + [n for n in dir(torch.optim) if isinstance(getattr(torch.optim, n), type)
                    and n[0].isupper() and n != "Optimizer"]


def _optimizer(check: CheckInput) -> tuple[str, dict[str, Any]] | None:
    section = check.section("optimizer")
    type_name = section.get("type")
    if not isinstance(type_name, str):
        return None
    params = section.get("params")
    return type_name, params if isinstance(params, dict) else {}


@rule("optimizer-type", Severity.ERROR, ["optimizer"],
      why="DeepSpeed builds its own optimizers (adam, adamw, lamb, lion, adagrad...) or looks the name up "
          "in torch.optim; anything else fails at deepspeed.initialize",
      fix="use a DeepSpeed optimizer name (\"AdamW\") or a torch.optim class name")
def optimizer_type(check: CheckInput) -> Iterator[Problem]:
    """optimizer.type names an optimizer DeepSpeed can build."""
    found = _optimizer(check)
    if found is None:
        raise NotApplicable("no optimizer.type in the config")
    type_name, params = found
    if deepspeed_optimizer(type_name, check.offload_device("offload_optimizer") != "none", params) is None:
        close = suggest(type_name, _optimizer_names())
        hint = f"; did you mean {close[0]!r}?" if close else ""
        yield Problem(f"optimizer.type {type_name!r} is neither a DeepSpeed optimizer nor in torch.optim: "
                    f"AttributeError: module 'torch.optim' has no attribute '{type_name}'{hint}",
                    path=("optimizer", "type"), fix=f"set optimizer.type to {close[0]!r}" if close else None)


@rule("optimizer-params", Severity.ERROR, ["optimizer"],
      why="optimizer.params are passed as keyword arguments to the optimizer's constructor; an unknown "
          "one fails with TypeError: got an unexpected keyword argument",
      fix="rename or remove the parameter")
def optimizer_params(check: CheckInput) -> Iterator[Problem]:
    """optimizer.params are all accepted by the optimizer DeepSpeed will build."""
    found = _optimizer(check)
    if found is None:
        raise NotApplicable("no optimizer.type in the config")
    type_name, params = found
    choice = deepspeed_optimizer(type_name, check.offload_device("offload_optimizer") != "none", params)
    if choice is None or choice.cls is None or "*" in choice.accepted:
        raise NotApplicable(f"parameters of {type_name!r} cannot be checked")
    if "max_grad_norm" in params:
        yield Problem("optimizer.params.max_grad_norm: DeepSpeed refuses it ('max_grad_norm' is not supported "
                    "as an optimizer parameter)", path=("optimizer", "params", "max_grad_norm"),
                    fix="move the value to the top-level \"gradient_clipping\"")
    for key in params:
        if key != "max_grad_norm" and key not in choice.accepted:
            close = suggest(key, choice.accepted)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            yield Problem(f"optimizer.params.{key} is not a parameter of {choice.cls.__name__} (what "
                        f"DeepSpeed builds for {type_name!r}){hint}", path=("optimizer", "params", key),
                        fix=f"rename it to {close[0]!r}" if close else f"remove optimizer.params.{key}")


@rule("zero-untested-optimizer", Severity.ERROR, ["optimizer", "zero"],
      why="with ZeRO on, DeepSpeed asserts its optimizer is one it tested unless allowed: 'You are using "
          "an untested ZeRO Optimizer. Please add <\"zero_allow_untested_optimizer\": true>'",
      fix="use Adam/AdamW/Adagrad/Lion, or set \"zero_allow_untested_optimizer\": true")
def zero_untested_optimizer(check: CheckInput) -> Iterator[Problem]:
    """A ZeRO config's optimizer is one DeepSpeed supports under ZeRO (or it is explicitly allowed)."""
    found = _optimizer(check)
    if found is None or check.zero_stage() == 0:
        raise NotApplicable("no optimizer.type, or ZeRO off")
    if check.value("zero_allow_untested_optimizer") is True:
        return
    type_name, params = found
    choice = deepspeed_optimizer(type_name, check.offload_device("offload_optimizer") != "none", params)
    if choice is None or choice.cls is None:
        raise NotApplicable(f"{type_name!r} is not a class DeepSpeed builds here")
    from deepspeed.runtime.zero.utils import ZERO_SUPPORTED_OPTIMIZERS

    if choice.cls not in ZERO_SUPPORTED_OPTIMIZERS:
        yield Problem(f"optimizer.type {type_name!r} builds {choice.cls.__name__}, which ZeRO has not tested: "
                    "DeepSpeed stops unless zero_allow_untested_optimizer is true", path=("optimizer", "type"))


@rule("scheduler-type", Severity.ERROR, ["scheduler"],
      why="DeepSpeed looks scheduler.type up in deepspeed.runtime.lr_schedules, then in "
          "torch.optim.lr_scheduler ('DeepSpeed does not recognize LR scheduler')",
      fix="use WarmupLR, WarmupDecayLR, WarmupCosineLR, OneCycle, LRRangeTest or a torch scheduler name")
def scheduler_type(check: CheckInput) -> Iterator[Problem]:
    """scheduler.type names a scheduler DeepSpeed can build, with parameters it accepts."""
    import torch
    from deepspeed.runtime import lr_schedules

    section = check.section("scheduler")
    name = section.get("type")
    if not isinstance(name, str):
        raise NotApplicable("no scheduler.type in the config")
    cls = getattr(lr_schedules, name, None) or getattr(torch.optim.lr_scheduler, name, None)
    if not isinstance(cls, type):
        names = list(lr_schedules.VALID_LR_SCHEDULES) + [n for n in dir(torch.optim.lr_scheduler)
                                                          if n[0].isupper()]
        close = suggest(name, names)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        yield Problem(f"scheduler.type {name!r}: DeepSpeed does not recognize LR scheduler {name}{hint}",
                    path=("scheduler", "type"), fix=f"set scheduler.type to {close[0]!r}" if close else None)
        return
    params = section.get("params")
    accepted = _parameters(cls)
    if isinstance(params, dict) and "*" not in accepted:
        for key in params:
            if key not in accepted:
                close = suggest(key, accepted)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                yield Problem(f"scheduler.params.{key} is not a parameter of {name}{hint}",
                            path=("scheduler", "params", key),
                            fix=f"rename it to {close[0]!r}" if close else f"remove scheduler.params.{key}")


@rule("offload-cpu-optimizer", Severity.ERROR, ["optimizer", "offload"],
      why="ZeRO-Offload runs the optimizer step on the CPU; DeepSpeed expects its own CPU Adam there and "
          "refuses a client optimizer ('You are using ZeRO-Offload with a client provided optimizer') "
          "unless zero_force_ds_cpu_optimizer is false",
      fix="declare the optimizer in the config (\"optimizer\": {\"type\": \"AdamW\", ...}) so DeepSpeed "
          "builds DeepSpeedCPUAdam")
def offload_cpu_optimizer(check: CheckInput) -> Iterator[Problem]:
    """Optimizer offload gets DeepSpeed's CPU optimizer (CPU Adam)."""
    if check.offload_device("offload_optimizer") == "none" or check.zero_stage() == 0:
        raise NotApplicable("no optimizer offload")
    forced = check.value("zero_force_ds_cpu_optimizer", default=True) is not False
    found = _optimizer(check)
    if found is None:
        client = "the HF Trainer creates a torch optimizer" if check.runner is Runner.HF_TRAINER else \
            "your code must pass the optimizer"
        if forced:
            yield Problem(f"offload_optimizer is on but the config has no optimizer, so {client}: DeepSpeed "
                        "raises ZeRORuntimeException ('You are using ZeRO-Offload with a client provided "
                        "optimizer') unless it is a DeepSpeedCPUAdam", path=("optimizer",),
                        severity=Severity.ERROR if check.runner is Runner.HF_TRAINER else Severity.WARNING)
        else:
            yield Problem("zero_force_ds_cpu_optimizer is false: a client optimizer steps on the CPU, which is "
                        "usually several times slower than DeepSpeedCPUAdam", path=("zero_force_ds_cpu_optimizer",),
                        severity=Severity.WARNING)
        return
    type_name, params = found
    choice = deepspeed_optimizer(type_name, True, params)
    if choice is None or choice.cls is None:
        return
    if choice.cls.__name__.startswith("DeepSpeedCPU"):
        return
    if type_name.lower() == "lamb":
        yield Problem("optimizer.type lamb with offload_optimizer: DeepSpeed builds FusedLamb, a GPU-only "
                    "kernel, for CPU-resident optimizer states", path=("optimizer", "type"),
                    fix="use AdamW (DeepSpeedCPUAdam) with offload, or drop offload_optimizer")
    else:
        yield Problem(f"optimizer.type {type_name!r} with offload_optimizer runs {choice.cls.__name__} on the "
                    "CPU: slow, and not DeepSpeed's CPU Adam", path=("optimizer", "type"), severity=Severity.WARNING,
                    fix="use \"AdamW\" (or Adagrad/Lion) so DeepSpeed builds its CPU implementation")


@rule("hf-optimizer-scheduler", Severity.ERROR, ["optimizer", "scheduler", "hf"],
      why="with an optimizer in the DeepSpeed config the HF Trainer does not build its own: --adafactor "
          "is refused and --optim is ignored; scheduler pairing depends on the transformers version",
      fix="configure the optimizer in one place only")
def hf_optimizer_scheduler(check: CheckInput) -> Iterator[Problem]:
    """The HF Trainer's optimizer/scheduler arguments and the DeepSpeed config agree on who builds what."""
    if check.runner is not Runner.HF_TRAINER or check.trainer is None:
        raise NotApplicable("no HF Trainer arguments after '--'")
    args = check.trainer
    has_optimizer = "optimizer" in check.config.data
    has_scheduler = "scheduler" in check.config.data
    if has_optimizer and args.adafactor:
        yield Problem("--adafactor with an optimizer in the DeepSpeed config: the HF Trainer stops with "
                    "'--adafactor was passed, but also found `optimizer` configured in the DeepSpeed config. "
                    "Only one optimizer can be configured.'", path=("optimizer",),
                    fix="remove --adafactor, or the optimizer section")
    if has_optimizer and "optim" in args.given:
        yield Problem(f"--optim {args.optim} is ignored: the DeepSpeed config's optimizer "
                    f"({check.value('optimizer', 'type')}) is used", path=("optimizer",), severity=Severity.WARNING,
                    fix="remove --optim, or remove the optimizer section to let the HF Trainer build it")
    if has_optimizer and not has_scheduler:
        yield Problem(f"DeepSpeed optimizer with the HF scheduler (--lr_scheduler_type {args.lr_scheduler_type}):"
                    " transformers >= 4.33 wraps it for DeepSpeed; older releases refuse this combination "
                    "(not verified here: transformers is not a clusterkit dependency)", path=("optimizer",),
                    severity=Severity.INFO, fix="add a scheduler section (e.g. WarmupDecayLR with \"auto\" "
                                                "params) if your transformers is older than 4.33")
