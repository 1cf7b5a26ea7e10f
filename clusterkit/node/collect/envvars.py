"""Environment variables that decide how DeepSpeed, NCCL and CUDA behave on this node.

Read from the agent's own environment, which over SSH is exactly the non-interactive shell
environment DeepSpeed's pdsh launcher gets. Stdlib only, Python 3.8 syntax: ships inside the agent.
"""

from __future__ import annotations

import os
from typing import Mapping

EXACT = (
    "PATH", "LD_LIBRARY_PATH", "CUDA_HOME", "CUDA_PATH", "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER",
    "TORCH_CUDA_ARCH_LIST", "TORCH_EXTENSIONS_DIR", "TRITON_CACHE_DIR", "MASTER_ADDR", "MASTER_PORT",
    "WORLD_SIZE", "RANK", "LOCAL_RANK", "PDSH_RCMD_TYPE", "PDSH_SSH_ARGS_APPEND", "DS_ENV_FILE",
    "DS_SKIP_CUDA_CHECK", "DS_BUILD_OPS", "DS_ACCELERATOR", "VIRTUAL_ENV", "CONDA_PREFIX",
    "CONDA_DEFAULT_ENV", "PYTHONPATH", "HOME", "USER", "SHELL", "OMP_NUM_THREADS",
)
PREFIXES = ("NCCL_", "GLOO_", "UCX_", "OMPI_COMM_WORLD_", "SLURM_", "SRUN_", "PMI_", "TORCH_NCCL_", "NVIDIA_")


def collect_env_vars(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables from ``environ`` (default: this process) that matter to a DeepSpeed run."""
    env = os.environ if environ is None else environ
    return {k: env[k] for k in sorted(env) if k in EXACT or k.startswith(PREFIXES)}
