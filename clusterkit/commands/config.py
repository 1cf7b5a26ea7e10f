"""``clusterkit config check DS_CONFIG [-- TRAINER ARGS]``: will this DeepSpeed config run here?

Reads the JSON (errors at ``file:line:col``), works out the world size from the hostfile or
``--world-size``, simulates the HF Trainer's ``"auto"`` fill-in from the trainer arguments after ``--``,
runs DeepSpeed's own config parser and clusterkit's rules, and prints the findings. Exit 1 when any
finding is an error, 2 on bad input.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import TYPE_CHECKING, Any

from clusterkit.commands.common import TrailingArgsParser, add_hostfile_arguments
from clusterkit.errors import ExitCode, UsageError

if TYPE_CHECKING:
    from clusterkit.dsconfig.check import ConfigCheckReport


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "config", help="check a DeepSpeed config against the cluster and the launch arguments",
        description="DeepSpeed config tools.")
    parser.set_defaults(run=lambda _args: _print_help(parser))
    commands = parser.add_subparsers(dest="config_command", metavar="SUBCOMMAND",
                                     parser_class=TrailingArgsParser)
    check = commands.add_parser(
        "check", help="find what in a DeepSpeed config will fail on this cluster, and how to fix it",
        description="Check a DeepSpeed config JSON: syntax (file:line:col), keys against the installed "
                    "DeepSpeed, batch arithmetic against the world size, what \"auto\" becomes under the "
                    "HF Trainer (give its arguments after '--'), precision, ZeRO offload and checkpoint "
                    "settings. Exit 1 if anything will fail, 2 on bad input.",
        epilog="example: clusterkit config check ds_config.json --hostfile hostfile -- train.py "
               "--per_device_train_batch_size 4 --gradient_accumulation_steps 8 --bf16")
    check.add_argument("ds_config", metavar="DS_CONFIG", help="DeepSpeed config JSON file")
    where = check.add_mutually_exclusive_group()
    add_hostfile_arguments(check, positional=False, group=where)
    where.add_argument("--world-size", type=int, metavar="N", help="number of ranks (GPUs) in the job")
    check.add_argument("--tp", type=int, default=1, metavar="N", help="tensor-parallel size (divides the "
                       "world into data-parallel groups)")
    check.add_argument("--pp", type=int, default=1, metavar="N", help="pipeline-parallel size")
    check.add_argument("--runner", choices=["hf-trainer", "accelerate", "deepspeed", "unknown"],
                       help="who hands the config to DeepSpeed (default: hf-trainer when arguments follow "
                            "'--', else unknown)")
    check.add_argument("--facts", metavar="FILE", help="doctor JSON (or one node's facts) for GPU compute "
                       "capability and libaio; default: this machine")
    check.add_argument("--shared-fs", choices=["yes", "no", "unknown"], default="unknown",
                       help="whether the nodes share the output filesystem (default: unknown)")
    check.add_argument("--hf-config", metavar="CONFIG_JSON",
                       help="the model's HF config.json, to fill hidden_size-based \"auto\" values")
    check.add_argument("--json", action="store_true", help="print a JSON report")
    check.add_argument("--show-passed", action="store_true", help="also list passed and skipped rules")
    check.set_defaults(run=run_check)


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return int(ExitCode.USAGE)


def run_check(args: argparse.Namespace) -> int:
    from clusterkit.dsconfig.check import check_config
    from clusterkit.dsconfig.load import load_ds_config
    from clusterkit.dsconfig.rules import Runner, SharedFs
    from clusterkit.dsconfig.topology import (
        Parallelism,
        topology_from_counts,
        topology_from_hostfile,
    )

    if (args.include or args.exclude) and not args.hostfile:
        raise UsageError("--include/--exclude need --hostfile")
    if args.tp < 1 or args.pp < 1:
        raise UsageError("--tp and --pp must be at least 1")
    config = load_ds_config(args.ds_config)
    topology = None
    if args.hostfile:
        topology = topology_from_hostfile(args.hostfile, args.include, args.exclude)
    elif args.world_size is not None:
        topology = topology_from_counts(world_size=args.world_size)
    hidden_size = None
    if args.hf_config:
        from clusterkit.dsconfig.hf_model import load_hf_config

        hidden_size = load_hf_config(args.hf_config).hidden_size
    report = check_config(
        config, topology=topology, parallel=Parallelism(args.tp, args.pp), trainer_argv=args.trainer_args,
        runner=Runner(args.runner) if args.runner else None, resources=_resources(args.facts),
        shared_fs=SharedFs(args.shared_fs), hidden_size=hidden_size)
    if args.json:
        print(json.dumps(report_to_json(report), indent=2, default=str))
    else:
        from rich.console import Console

        from clusterkit.ui.report import render_table

        render_table(report, Console(), show_passed=args.show_passed)
    return int(ExitCode.PROBLEMS if report.has_errors else ExitCode.OK)


def _resources(facts_path: str | None) -> Any:
    from clusterkit.dsconfig.resources import load_facts_file, local_resources, resources_from_facts

    if facts_path:
        return resources_from_facts(load_facts_file(facts_path), f"--facts {facts_path}")
    return local_resources()


def report_to_json(report: ConfigCheckReport) -> dict[str, Any]:
    """The ``clusterkit.config-check/v1`` document."""
    from clusterkit.ui.report import findings_document

    topology = report.topology
    return findings_document(
        report, "clusterkit.config-check/v1", config=report.config.path,
        deepspeed_version=report.deepspeed_version, runner=report.runner.value,
        topology=None if topology is None else {
            "source": topology.source, "hosts": list(topology.hosts),
            "gpus_per_host": list(topology.gpus_per_host), "world_size": topology.world_size},
        resources=report.resources_source, config_summary=dataclasses.asdict(report.summary),
        effective_config=report.effective)
