"""Software stack checks: interpreter, torch, driver vs CUDA, toolkit, libraries, DeepSpeed ops, ninja."""

from __future__ import annotations

import pytest

from clusterkit.checks.software import CUDA_MINOR_MISMATCH_OK, _arch_runs, major_minor
from clusterkit.node.facts import NodeFacts, SharedLibFacts, Unavailable
from tests.factories import (
    CheckCase,
    assert_case,
    assert_table_covers,
    cpu_only_node,
    fail,
    h100_fixture_node,
    healthy_gpu_node,
    make_cuda,
    make_ds_ops,
    passes,
    skips,
    with_all_gpus,
    with_env,
    with_section,
)

NO_NINJA = Unavailable("ninja not found on PATH of the training interpreter")


def env(**changes: object) -> NodeFacts:
    return with_section(healthy_gpu_node(), "python_env", **changes)


def libraries_without(*prefixes: str, extra: tuple[SharedLibFacts, ...] = (), **env_changes: object) -> NodeFacts:
    libs = [lib for lib in make_cuda().libraries if not lib.soname.startswith(prefixes)]  # type: ignore[union-attr]
    facts = with_section(healthy_gpu_node(), "cuda", libraries=[*libs, *extra])
    return with_section(facts, "python_env", **env_changes) if env_changes else facts


def driver_cuda(version: str, **env_changes: object) -> NodeFacts:
    return with_section(env(**env_changes), "nvidia", cuda_driver_version=version)


def nvcc(version: str, torch_cuda: str = "13.0") -> NodeFacts:
    return with_section(env(torch_cuda=torch_cuda), "cuda", nvcc_version=version)


CASES: list[CheckCase] = [
    fail("interpreter-missing", "missing", lambda: env(exists=False, version=Unavailable("no such file")),
         "interpreter /opt/venv/bin/python does not exist on gpu-node-0", where="/opt/venv/bin/python"),
    passes("interpreter-missing", "present", healthy_gpu_node),
    skips("python-interpreter-unusable", "missing-is-one-error-not-two",
          lambda: env(exists=False, version=Unavailable("no such file")), "(interpreter-missing)"),
    fail("python-interpreter-unusable", "broken", lambda: env(version=Unavailable("exited 127: libpython3.12.so.1.0: "
                                                                                  "cannot open shared object file")),
         "exists but could not run: exited 127"),
    passes("python-interpreter-unusable", "runs", healthy_gpu_node),
    fail("torch-missing", "not-installed", lambda: env(torch_version=Unavailable("ModuleNotFoundError: No module "
                                                                                 "named 'torch'")),
         "/opt/venv/bin/python cannot import torch: ModuleNotFoundError", fix_contains="/opt/venv/bin/python -m pip "
                                                                                       "install torch"),
    passes("torch-missing", "installed", healthy_gpu_node),
    skips("torch-missing", "interpreter-missing", lambda: env(exists=False), "does not exist"),
    fail("torch-cpu-build-on-gpu-node", "cpu-wheel", lambda: env(torch_version="2.11.0+cpu", torch_cuda=None),
         "torch 2.11.0+cpu is a CPU build but this node has NVIDIA GPUs",
         fix_contains="--index-url https://download.pytorch.org/whl/cu130"),
    passes("torch-cpu-build-on-gpu-node", "cuda-wheel", healthy_gpu_node),
    skips("torch-cpu-build-on-gpu-node", "cpu-node", cpu_only_node, "no NVIDIA GPU"),
    fail("torch-cuda-unavailable", "not-available", lambda: env(torch_cuda_available=False),
         "torch.cuda.is_available() is False in /opt/venv/bin/python although the node has 8 GPU(s)"),
    fail("torch-cuda-unavailable", "sees-fewer", lambda: env(torch_device_count=4),
         "torch sees 4 of the node's 8 GPUs"),
    passes("torch-cuda-unavailable", "fewer-by-choice", lambda: with_env(env(torch_device_count=4),
                                                                         CUDA_VISIBLE_DEVICES="0,1,2,3")),
    passes("torch-cuda-unavailable", "sees-all", healthy_gpu_node),
    skips("torch-cuda-unavailable", "cpu-build", cpu_only_node, "torch is a CPU build"),
    fail("torch-arch-unsupported", "old-wheel-on-h100",
         lambda: env(torch_arch_list=["sm_50", "sm_60", "sm_70", "sm_80"]),
         "torch has no kernels for GPU 0 (NVIDIA H100 80GB HBM3, sm_90); it was built for sm_50 sm_60 sm_70 sm_80",
         count=8),
    fail("torch-arch-unsupported", "arch-specific-only", lambda: with_all_gpus(
        env(torch_arch_list=["sm_90a"]), compute_capability="10.0"), "sm_100"),
    passes("torch-arch-unsupported", "ptx-runs-on-newer", lambda: env(torch_arch_list=["sm_80", "compute_80"])),
    passes("torch-arch-unsupported", "h100-wheel", healthy_gpu_node),
    skips("torch-arch-unsupported", "cuda-not-initialised", lambda: env(torch_arch_list=[]), "empty arch list"),
    fail("driver-too-old-for-torch", "cu130-on-12.8-driver", lambda: driver_cuda("12.8"),
         "torch is built for CUDA 13.0 but the driver 580.159.04 (CUDA 12.8) only supports up to CUDA 12.8"),
    passes("driver-too-old-for-torch", "same-major-newer-minor", lambda: driver_cuda("12.4", torch_cuda="12.8")),
    passes("driver-too-old-for-torch", "h100", healthy_gpu_node),
    skips("driver-too-old-for-torch", "cpu-build", cpu_only_node),
    fail("driver-older-than-torch-cuda", "cu128-on-12.4-driver", lambda: driver_cuda("12.4", torch_cuda="12.8"),
         "torch is built for CUDA 12.8, newer than the driver 580.159.04 (CUDA 12.4)"),
    passes("driver-older-than-torch-cuda", "h100", healthy_gpu_node),
    fail("nvcc-torch-cuda-mismatch", "major", lambda: nvcc("12.8.93"),
         "nvcc 12.8 (/usr/local/cuda/bin/nvcc) does not match torch's CUDA 13.0"),
    fail("nvcc-torch-cuda-mismatch", "cuda13-minor", lambda: nvcc("13.1.0"), "nvcc 13.1"),
    fail("nvcc-torch-cuda-mismatch", "12.7-is-not-in-deepspeeds-list", lambda: nvcc("12.7", torch_cuda="12.4"),
         "nvcc 12.7"),
    passes("nvcc-torch-cuda-mismatch", "cuda12-minor-accepted", lambda: nvcc("12.4.131", torch_cuda="12.8")),
    passes("nvcc-torch-cuda-mismatch", "same", healthy_gpu_node),
    skips("nvcc-torch-cuda-mismatch", "ds-skip-cuda-check", lambda: with_env(nvcc("12.8"), DS_SKIP_CUDA_CHECK="1"),
          "DS_SKIP_CUDA_CHECK=1"),
    skips("nvcc-torch-cuda-mismatch", "no-nvcc", lambda: with_section(healthy_gpu_node(), "cuda",
                                                                      nvcc_version=Unavailable("nvcc not found")),
          "nvcc not found"),
    fail("cuda-home-missing", "no-toolkit", lambda: env(cpp_ext_cuda_home=None),
         "torch (CUDA 13.0) finds no CUDA toolkit: torch.utils.cpp_extension.CUDA_HOME is None"),
    passes("cuda-home-missing", "toolkit", healthy_gpu_node),
    skips("cuda-home-missing", "ops-prebuilt", lambda: env(cpp_ext_cuda_home=None,
                                                           deepspeed_ops=make_ds_ops(installed=True)), "prebuilt"),
    fail("libcuda-not-resolvable", "no-driver-lib", lambda: libraries_without("libcuda.so"),
         "libcuda.so.1 (the NVIDIA driver library) is not resolvable"),
    passes("libcuda-not-resolvable", "present", healthy_gpu_node),
    skips("libcuda-not-resolvable", "cpu-node", cpu_only_node),
    fail("libcudart-not-resolvable", "wrong-major", lambda: libraries_without(
        "libcudart", extra=(SharedLibFacts("libcudart.so.12", "/usr/local/cuda-12/lib64/libcudart.so.12", "ldconfig"),),
        torch_cuda_available=False), "libcudart.so.13 is not resolvable by the dynamic loader"),
    passes("libcudart-not-resolvable", "present", lambda: env(torch_cuda_available=False)),
    skips("libcudart-not-resolvable", "torch-brings-its-own", lambda: libraries_without("libcudart"),
          "torch uses CUDA with the runtime it carries"),
    fail("libnccl-not-resolvable", "none-anywhere", lambda: libraries_without(
        "libnccl", nccl_version=Unavailable("torch.cuda.nccl.version() failed")), "libnccl.so.2 is not resolvable"),
    passes("libnccl-not-resolvable", "system-nccl", lambda: env(nccl_version=Unavailable("failed"))),
    skips("libnccl-not-resolvable", "torch-carries-nccl", lambda: libraries_without("libnccl"), "torch carries NCCL"),
    fail("deepspeed-missing", "not-installed", lambda: env(deepspeed_version=Unavailable(
        "ModuleNotFoundError: No module named 'deepspeed'")), "cannot import deepspeed",
         fix_contains="/opt/venv/bin/python -m pip install deepspeed"),
    passes("deepspeed-missing", "installed", healthy_gpu_node),
    fail("deepspeed-op-incompatible", "h100-fixture", h100_fixture_node,
         "DeepSpeed op async_io cannot be built here: async_io requires the dev libaio .so object and headers but "
         "these were not found; async_io: please install the libaio-dev package with apt", count=3,
         fix_contains="sudo apt-get install -y libaio-dev"),
    passes("deepspeed-op-incompatible", "all-compatible", healthy_gpu_node),
    fail("ninja-missing", "not-on-path", lambda: env(ninja_path=NO_NINJA),
         "ninja is not on the non-interactive PATH of /opt/venv/bin/python",
         fix_contains="echo 'PATH=/opt/venv/bin:$PATH' >> ~/.deepspeed_env"),
    fail("ninja-missing", "cpu-node-needs-it-for-cpu-adam", lambda: with_section(cpu_only_node(), "python_env",
                                                                                 ninja_path=NO_NINJA), "ninja"),
    passes("ninja-missing", "on-path", healthy_gpu_node),
    skips("ninja-missing", "ops-prebuilt", lambda: env(ninja_path=NO_NINJA, deepspeed_ops=make_ds_ops(installed=True)),
          "prebuilt"),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_software_check(case: CheckCase) -> None:
    assert_case(case)


def test_every_software_check_has_a_failing_and_a_passing_case() -> None:
    assert_table_covers("software", CASES)


@pytest.mark.parametrize(("arch", "capability", "runs"), [
    ("sm_90", (9, 0), True), ("sm_80", (8, 6), True), ("sm_86", (8, 0), False), ("sm_80", (9, 0), False),
    ("compute_80", (9, 0), True), ("compute_90", (8, 0), False), ("sm_90a", (9, 0), True), ("sm_90a", (10, 0), False),
    ("sm_100", (10, 0), True), ("sm_120", (12, 0), True), ("gibberish", (9, 0), False),
])
def test_kernel_compatibility_follows_cuda_rules(arch: str, capability: tuple[int, int], runs: bool) -> None:
    assert _arch_runs(arch, capability) is runs


def test_versions_are_read_from_any_cuda_text() -> None:
    assert major_minor("Cuda compilation tools, release 13.0, V13.0.88") == (13, 0)
    assert major_minor("12.4.131") == (12, 4)
    assert major_minor("unknown") is None


def test_minor_mismatch_table_mirrors_the_installed_deepspeed() -> None:
    builder = pytest.importorskip("deepspeed.ops.op_builder.builder")
    assert {major: tuple(versions) for major, versions in builder.cuda_minor_mismatch_ok.items()} == \
        CUDA_MINOR_MISMATCH_OK
