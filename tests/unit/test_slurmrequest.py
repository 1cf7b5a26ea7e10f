"""What clusterkit asks salloc for: the environment it runs in (issue 19, W7), on real 22.05 output of the
namespace cluster (tests/fixtures/slurm-22.05)."""

from __future__ import annotations

from pathlib import Path

import pytest

from clusterkit.remote.slurm import _salloc_fix
from clusterkit.slurmrequest import job_variable, request_environment

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "slurm-22.05"


def fixture_environment(name: str) -> dict[str, str]:
    lines = (FIXTURES / name).read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


# --- the environment salloc runs in (issue 19, W7) ---------------------------------------------------------


def test_user_configuration_of_slurms_clients_reaches_salloc() -> None:  # issue 19, W7
    user = {"SLURM_CONF": "/opt/slurm/etc/slurm.conf", "SLURM_CLUSTERS": "ckt0", "SLURM_DEBUG_FLAGS": "Gres",
            "SLURM_EXIT_ERROR": "9", "SLURM_EXIT_IMMEDIATE": "10", "SLURM_HINT": "nomultithread",
            "SLURM_TIME_FORMAT": "relative", "SALLOC_ACCOUNT": "proj", "SALLOC_PARTITION": "gpu",
            "SALLOC_GPUS_PER_NODE": "8", "PATH": "/usr/bin", "HOME": "/home/me"}
    assert request_environment(user) == user


def test_every_variable_of_a_real_job_is_dropped_but_the_config_it_names() -> None:  # issue 19, W7
    inside = {**fixture_environment("salloc-environment.txt"), **fixture_environment("srun-task-environment.txt")}
    kept = request_environment({**inside, "PATH": "/usr/bin"})
    assert kept == {"SLURM_CONF": inside["SLURM_CONF"], "PATH": "/usr/bin"}
    assert {name for name in inside if not job_variable(name)} == {"SLURM_CONF"}


@pytest.mark.parametrize("name", ["SLURM_JOB_ID", "SLURM_JOBID", "SLURM_STEP_ID", "SLURM_NTASKS_PER_NODE",
                                  "SLURM_CPUS_PER_TASK", "SLURM_GPUS_ON_NODE", "SLURMD_NODENAME", "SLURM_PROCID",
                                  "SLURM_ARRAY_TASK_ID", "SLURM_JOB_NODELIST_HET_GROUP_1", "SLURM_MEM_BIND_TYPE"])
def test_variables_slurm_sets_for_a_job_are_a_jobs(name: str) -> None:
    assert job_variable(name)


# --- when salloc gives up -----------------------------------------------------------------------------------


def test_salloc_that_refused_outright_blames_no_node() -> None:  # issue 19, W7
    refused = ("salloc: error: resolve_ctls_from_dns_srv: res_nsearch error: Unknown host\n"
               "salloc: error: fetch_config: DNS SRV lookup failed\n"
               "salloc: error: _establish_config_source: failed to fetch config\n")
    fix = _salloc_fix(refused, 60)
    assert "drained" not in fix and "SLURM_CONF" in fix
