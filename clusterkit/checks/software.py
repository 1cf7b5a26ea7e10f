"""Software stack checks: the training interpreter, torch and its CUDA, the driver, the CUDA toolkit
DeepSpeed JIT-builds ops with, libraries the loader resolves, DeepSpeed and its ops, ninja.

Facts describe the interpreter DeepSpeed's launcher runs on the node, as a non-interactive SSH shell
sees it, which is exactly what a pdsh launch gets.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator

from clusterkit.checks.gpu import cpu_only_run, gpus_present, node_gpus, readable_gpus
from clusterkit.checks.registry import NodeContext, node_check
from clusterkit.core.findings import NotApplicable, Problem, Severity, require
from clusterkit.node.facts import NodeFacts, PythonEnvFacts, SharedLibFacts, known

#: DeepSpeed's ``cuda_minor_mismatch_ok`` (op_builder/builder.py, 0.19.8): nvcc and torch may differ in
#: minor version only when both are listed for that major. CUDA 13 has no entry: minors must match.
CUDA_MINOR_MISMATCH_OK: dict[int, tuple[str, ...]] = {
    10: ("10.0", "10.1", "10.2"),
    11: ("11.0", "11.1", "11.2", "11.3", "11.4", "11.5", "11.6", "11.7", "11.8"),
    12: ("12.0", "12.1", "12.2", "12.3", "12.4", "12.5", "12.6", "12.8", "12.9"),
}

_VERSION = re.compile(r"(\d+)\.(\d+)")


def major_minor(text: str) -> tuple[int, int] | None:
    """``"12.4.131"`` / ``"release 12.4, V12.4.131"`` -> ``(12, 4)``; None when no version is found."""
    match = _VERSION.search(text)
    return (int(match.group(1)), int(match.group(2))) if match else None


def usable_env(facts: NodeFacts) -> PythonEnvFacts:
    """The training interpreter's facts, or skip when it is missing or could not be probed."""
    env = require(facts.python_env, "Python environment facts")
    if not env.exists:
        raise NotApplicable(f"interpreter {env.interpreter} does not exist (interpreter-missing)")
    if not known(env.version):
        raise NotApplicable(f"interpreter {env.interpreter} could not be probed: {env.version.reason}")
    return env


def torch_cuda_version(env: PythonEnvFacts) -> str:
    """torch's CUDA version (``"12.8"``), or skip for a CPU build or when torch is unreadable."""
    cuda = require(env.torch_cuda, "torch's CUDA version")
    if cuda is None:
        raise NotApplicable("torch is a CPU build")
    return cuda


def _pip(env: PythonEnvFacts, args: str) -> str:
    return f"{env.interpreter} -m pip install {args}"


def _all_ops_prebuilt(env: PythonEnvFacts) -> bool:
    ops = env.deepspeed_ops
    return known(ops) and bool(ops) and all(op.installed for op in ops)


# ------------------------------------------------------------------------------ interpreter, torch


@node_check("interpreter-missing", Severity.ERROR, tags=("python", "launcher"),
            why="DeepSpeed's pdsh launcher runs the launching machine's exact interpreter path on every node: "
                "`bash: /env/bin/python: No such file or directory` where it is missing",
            fix="put the env at the same absolute path on every node (conda-pack, unpack, conda-unpack)")
def check_interpreter_exists(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """The training interpreter exists at the same path on every node."""
    env = require(facts.python_env, "Python environment facts")
    if not env.exists:
        yield Problem(f"interpreter {env.interpreter} does not exist on {ctx.host}", where=env.interpreter,
                      fix=f"create the env at {env.interpreter} on {ctx.host} (the same path as on the "
                          "launching machine)")


@node_check("python-interpreter-unusable", Severity.ERROR, tags=("python", "launcher"),
            why="An interpreter that exists but cannot start (a missing libpython, a moved env whose "
                "shebangs and prefix point elsewhere) fails every rank on the node.",
            fix="repair or reinstall the environment at the same absolute path on every node")
def check_interpreter(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """The training interpreter runs."""
    env = require(facts.python_env, "Python environment facts")
    if not env.exists:
        raise NotApplicable(f"interpreter {env.interpreter} does not exist (interpreter-missing)")
    if not known(env.version):
        yield Problem(f"the training interpreter {env.interpreter} exists but could not run: "
                      f"{env.version.reason}", where=env.interpreter,
                      fix=f"{env.interpreter} -c 'import sys; print(sys.version)'   # shows the failure")


@node_check("torch-missing", Severity.ERROR, tags=("python", "torch"),
            why="The training interpreter cannot import torch, so neither DeepSpeed nor the job can start.",
            fix="install torch into the training environment")
def check_torch_missing(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """torch imports in the training interpreter."""
    env = usable_env(facts)
    if not known(env.torch_version):
        yield Problem(f"{env.interpreter} cannot import torch: {env.torch_version.reason}",
                      where=env.interpreter, fix=_pip(env, "torch"))


@node_check("torch-cpu-build-on-gpu-node", Severity.ERROR, tags=("python", "torch", "cuda"),
            why="A CPU-only torch build ignores the node's GPUs: DeepSpeed falls back to the CPU "
                "accelerator or fails to find CUDA.",
            fix="reinstall torch from the CUDA wheel index matching the driver")
def check_torch_cpu_build(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """torch is a CUDA build on a node with NVIDIA GPUs."""
    env = usable_env(facts)
    if not gpus_present(facts):
        raise NotApplicable("no NVIDIA GPU on this node")
    cuda = require(env.torch_cuda, "torch's CUDA version")
    if cuda is None:
        version = env.torch_version if known(env.torch_version) else "?"
        index = "cu128"
        nvidia = facts.nvidia
        if known(nvidia) and known(nvidia.cuda_driver_version):
            driver = major_minor(nvidia.cuda_driver_version)
            index = f"cu{driver[0]}{driver[1]}" if driver else index
        yield Problem(f"torch {version} is a CPU build but this node has NVIDIA GPUs", where=env.interpreter,
                      fix=_pip(env, f"--force-reinstall torch --index-url https://download.pytorch.org/whl/"
                                    f"{index}   # a CUDA version the driver supports"))


@node_check("torch-cuda-unavailable", Severity.ERROR, tags=("python", "torch", "cuda"),
            why="torch was built with CUDA but cannot use the GPUs here (driver too old, libraries not "
                "found, CUDA_VISIBLE_DEVICES empty, no device access in a container).",
            fix="python -c 'import torch; torch.cuda.init()' shows the underlying CUDA error")
def check_torch_cuda_unavailable(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """torch can use every GPU of the node."""
    env = usable_env(facts)
    torch_cuda_version(env)
    gpus = node_gpus(facts)
    available = require(env.torch_cuda_available, "torch.cuda.is_available()")
    fix = f"{env.interpreter} -c 'import torch; torch.cuda.init()'   # prints the CUDA error"
    if not available:
        yield Problem(f"torch.cuda.is_available() is False in {env.interpreter} although the node has "
                      f"{len(gpus)} GPU(s)", where=env.interpreter, fix=fix)
        return
    count = env.torch_device_count
    if known(count) and count < len(gpus) and "CUDA_VISIBLE_DEVICES" not in facts.env_vars:
        yield Problem(f"torch sees {count} of the node's {len(gpus)} GPUs", where=env.interpreter, fix=fix)


def _arch_runs(arch: str, capability: tuple[int, int]) -> bool:
    """Whether a kernel compiled for ``arch`` (``sm_80``, ``compute_90``, ``sm_90a``) runs on a GPU."""
    match = re.fullmatch(r"(sm|compute)_(\d+)(\d)([a-z]?)", arch)
    if not match:
        return False
    kind, major, minor, suffix = match.group(1), int(match.group(2)), int(match.group(3)), match.group(4)
    if suffix:  # arch-specific (sm_90a) code runs on exactly that architecture
        return (major, minor) == capability
    if kind == "compute":  # PTX is JIT-compiled for any newer GPU
        return (major, minor) <= capability
    return major == capability[0] and minor <= capability[1]  # SASS: same major, minor up to the GPU's


@node_check("torch-arch-unsupported", Severity.ERROR, tags=("python", "torch", "cuda"),
            why="torch carries no kernel for this GPU's architecture: every CUDA op fails with 'no kernel "
                "image is available for execution on the device'.",
            fix="install a torch build that lists the GPU's sm_XY in torch.cuda.get_arch_list()")
def check_torch_arch(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """torch has kernels for every GPU's compute capability."""
    env = usable_env(facts)
    torch_cuda_version(env)
    arch_list = require(env.torch_arch_list, "torch.cuda.get_arch_list()")
    if not arch_list:
        raise NotApplicable("torch reported an empty arch list (CUDA not initialised)")
    for gpu in readable_gpus(facts, "compute capability", lambda g: g.compute_capability):
        capability = gpu.compute_capability
        parsed = major_minor(capability) if known(capability) else None
        if parsed and not any(_arch_runs(arch, parsed) for arch in arch_list):
            yield Problem(f"torch has no kernels for GPU {gpu.index} ({gpu.name}, "
                          f"sm_{parsed[0]}{parsed[1]}); it was built for {' '.join(arch_list)}",
                          where=f"GPU {gpu.index}")


# ------------------------------------------------------------------------------- driver and toolkit


def _driver_and_torch(facts: NodeFacts) -> tuple[str, tuple[int, int], str, tuple[int, int]]:
    env = usable_env(facts)
    torch_cuda = torch_cuda_version(env)
    nvidia = require(facts.nvidia, "NVIDIA facts")
    driver_cuda = require(nvidia.cuda_driver_version, "the CUDA version the driver supports")
    driver_parsed, torch_parsed = major_minor(driver_cuda), major_minor(torch_cuda)
    if not driver_parsed or not torch_parsed:
        raise NotApplicable(f"unreadable versions: driver CUDA {driver_cuda!r}, torch CUDA {torch_cuda!r}")
    driver = nvidia.driver_version if known(nvidia.driver_version) else "?"
    return f"driver {driver} (CUDA {driver_cuda})", driver_parsed, torch_cuda, torch_parsed


@node_check("driver-too-old-for-torch", Severity.ERROR, tags=("cuda", "driver", "torch"),
            why="A driver supports CUDA up to one major version; torch built for a newer major cannot "
                "initialise CUDA at all ('The NVIDIA driver on your system is too old').",
            fix="upgrade the NVIDIA driver, or install a torch build for the driver's CUDA version")
def check_driver_major(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """The driver supports torch's CUDA major version."""
    driver, driver_cuda, torch_cuda, torch_parsed = _driver_and_torch(facts)
    if torch_parsed[0] > driver_cuda[0]:
        yield Problem(f"torch is built for CUDA {torch_cuda} but the {driver} only supports up to "
                      f"CUDA {driver_cuda[0]}.{driver_cuda[1]}", where="NVIDIA driver")


@node_check("driver-older-than-torch-cuda", Severity.WARNING, tags=("cuda", "driver", "torch"),
            why="torch's CUDA minor version is newer than the driver's: CUDA's minor-version "
                "compatibility lets most things run, but PTX JIT (some Triton and DeepSpeed JIT kernels) "
                "fails with 'the provided PTX was compiled with an unsupported toolchain'.",
            fix="upgrade the NVIDIA driver to one that supports torch's CUDA version")
def check_driver_minor(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """The driver supports torch's CUDA minor version too."""
    driver, driver_cuda, torch_cuda, torch_parsed = _driver_and_torch(facts)
    if torch_parsed[0] == driver_cuda[0] and torch_parsed[1] > driver_cuda[1]:
        yield Problem(f"torch is built for CUDA {torch_cuda}, newer than the {driver}", where="NVIDIA driver")


@node_check("nvcc-torch-cuda-mismatch", Severity.ERROR, tags=("cuda", "deepspeed", "jit"),
            why="DeepSpeed refuses to JIT-build CUDA ops when the toolkit's nvcc differs from torch's CUDA "
                "('Installed CUDA version X does not match the version torch was compiled with Y').",
            fix="install the CUDA toolkit matching torch's CUDA and point CUDA_HOME at it in "
                "~/.deepspeed_env (DS_SKIP_CUDA_CHECK=1 bypasses the check at your own risk)")
def check_nvcc_mismatch(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """nvcc's CUDA version is one DeepSpeed accepts with torch's CUDA."""
    env = usable_env(facts)
    torch_cuda = torch_cuda_version(env)
    cuda = require(facts.cuda, "CUDA toolkit facts")
    nvcc_version = require(cuda.nvcc_version, "nvcc version")
    if facts.env_vars.get("DS_SKIP_CUDA_CHECK") == "1":
        raise NotApplicable("DS_SKIP_CUDA_CHECK=1: DeepSpeed builds despite a version mismatch")
    nvcc, torch_parsed = major_minor(nvcc_version), major_minor(torch_cuda)
    if not nvcc or not torch_parsed or nvcc == torch_parsed:
        return
    nvcc_text, torch_text = f"{nvcc[0]}.{nvcc[1]}", f"{torch_parsed[0]}.{torch_parsed[1]}"
    accepted = CUDA_MINOR_MISMATCH_OK.get(nvcc[0], ())
    if nvcc[0] == torch_parsed[0] and nvcc_text in accepted and torch_text in accepted:
        return
    path = cuda.nvcc_path if known(cuda.nvcc_path) else "nvcc"
    yield Problem(f"nvcc {nvcc_text} ({path}) does not match torch's CUDA {torch_text}: DeepSpeed will not "
                  "JIT-build CUDA ops", where=path)


@node_check("cuda-home-missing", Severity.ERROR, tags=("cuda", "deepspeed", "jit"),
            why="DeepSpeed JIT-builds ops (FusedAdam, CPUAdam...) with the CUDA toolkit torch finds; "
                "without one it fails with 'MissingCUDAException: CUDA_HOME does not exist', then "
                "\"'DeepSpeedCPUAdam' object has no attribute 'ds_opt_adam'\".",
            fix="install the CUDA toolkit matching torch's CUDA and add CUDA_HOME=/usr/local/cuda to "
                "~/.deepspeed_env, or prebuild the ops: DS_BUILD_OPS=1 pip install deepspeed")
def check_cuda_home(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """torch finds a CUDA toolkit to JIT-build DeepSpeed ops with."""
    env = usable_env(facts)
    torch_cuda = torch_cuda_version(env)
    if _all_ops_prebuilt(env):
        raise NotApplicable("every DeepSpeed op is prebuilt: nothing is JIT-built")
    home = require(env.cpp_ext_cuda_home, "torch.utils.cpp_extension.CUDA_HOME")
    if home is None:
        yield Problem(f"torch (CUDA {torch_cuda}) finds no CUDA toolkit: "
                      "torch.utils.cpp_extension.CUDA_HOME is None", where=env.interpreter)


# ---------------------------------------------------------------------------------------- libraries


def _resolves(libraries: list[SharedLibFacts], prefix: str, major: int | None = None) -> bool:
    wanted = f"{prefix}.{major}" if major is not None else prefix
    return any(lib.soname == wanted or lib.soname.startswith(wanted + ".") for lib in libraries)


def _ld_fix(directory: str) -> str:
    return (f"echo {directory} | sudo tee /etc/ld.so.conf.d/cuda.conf && sudo ldconfig   "
            f"# or add LD_LIBRARY_PATH={directory}:$LD_LIBRARY_PATH to ~/.deepspeed_env")


@node_check("libcuda-not-resolvable", Severity.ERROR, tags=("cuda", "libraries"),
            why="libcuda.so.1 is the driver's user-space library; without it no CUDA program starts.",
            fix="reinstall the NVIDIA driver's user-space libraries (e.g. sudo apt-get install -y "
                "libnvidia-compute-<version>), or in a container use the NVIDIA container toolkit")
def check_libcuda(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """The dynamic loader resolves libcuda.so.1 on a GPU node."""
    if not gpus_present(facts):
        raise NotApplicable("no NVIDIA GPU on this node")
    libraries = require(require(facts.cuda, "CUDA facts").libraries, "loader's library list")
    if not _resolves(libraries, "libcuda.so", 1):
        yield Problem("libcuda.so.1 (the NVIDIA driver library) is not resolvable by the dynamic loader",
                      where="ldconfig -p")


def _runtime_lib_applies(facts: NodeFacts) -> tuple[PythonEnvFacts | None, int | None]:
    """(env, torch's CUDA major) when a missing CUDA runtime library matters, else skip."""
    reason = cpu_only_run(facts)
    if reason:
        raise NotApplicable(reason)
    env = facts.python_env if known(facts.python_env) else None
    torch_cuda = env.torch_cuda if env is not None else None
    cuda_build = env is not None and known(torch_cuda) and isinstance(torch_cuda, str)
    if not cuda_build and not gpus_present(facts):
        raise NotApplicable("no NVIDIA GPU and no CUDA build of torch")
    major = None
    if isinstance(torch_cuda, str):
        parsed = major_minor(torch_cuda)
        major = parsed[0] if parsed else None
    return env, major


@node_check("libcudart-not-resolvable", Severity.WARNING, tags=("cuda", "libraries"),
            why="When torch cannot bring its own CUDA runtime, programs started over pdsh fail with "
                "'libcudart.so.X: cannot open shared object file' because LD_LIBRARY_PATH is not exported.",
            fix=_ld_fix("/usr/local/cuda/lib64"))
def check_libcudart(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """The loader resolves libcudart when torch cannot use CUDA on its own."""
    env, major = _runtime_lib_applies(facts)
    if env is not None and known(env.torch_cuda_available) and env.torch_cuda_available:
        raise NotApplicable("torch uses CUDA with the runtime it carries")
    libraries = require(require(facts.cuda, "CUDA facts").libraries, "loader's library list")
    if not _resolves(libraries, "libcudart.so", major):
        name = f"libcudart.so.{major}" if major is not None else "libcudart.so"
        yield Problem(f"{name} is not resolvable by the dynamic loader and torch cannot use CUDA",
                      where="ldconfig -p / LD_LIBRARY_PATH")


@node_check("libnccl-not-resolvable", Severity.WARNING, tags=("cuda", "libraries", "nccl"),
            why="When torch does not carry NCCL, distributed training needs libnccl.so.2 from the "
                "loader path; otherwise NCCL cannot load on the nodes.",
            fix="sudo apt-get install -y libnccl2, or pip install nvidia-nccl-cu12 into the environment")
def check_libnccl(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """The loader resolves libnccl when torch reports no NCCL of its own."""
    env, _ = _runtime_lib_applies(facts)
    if env is not None and known(env.nccl_version):
        raise NotApplicable(f"torch carries NCCL {env.nccl_version}")
    libraries = require(require(facts.cuda, "CUDA facts").libraries, "loader's library list")
    if not _resolves(libraries, "libnccl.so", 2):
        yield Problem("libnccl.so.2 is not resolvable by the dynamic loader and torch reports no NCCL",
                      where="ldconfig -p / LD_LIBRARY_PATH")


# ------------------------------------------------------------------------------------ DeepSpeed, ninja


@node_check("deepspeed-missing", Severity.ERROR, tags=("python", "deepspeed"),
            why="The launcher runs 'python -m deepspeed.launcher.launch' on every node; without "
                "DeepSpeed in that interpreter the node fails at once.",
            fix="install deepspeed into the training environment")
def check_deepspeed_missing(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """DeepSpeed imports in the training interpreter."""
    env = usable_env(facts)
    if not known(env.deepspeed_version):
        yield Problem(f"{env.interpreter} cannot import deepspeed: {env.deepspeed_version.reason}",
                      where=env.interpreter, fix=_pip(env, "deepspeed"))


def _op_fix(env: PythonEnvFacts, warnings: list[str]) -> str | None:
    text = " ".join(warnings).lower()
    if "libaio" in text:
        return "sudo apt-get install -y libaio-dev   # RHEL: sudo dnf install -y libaio-devel"
    if "cutlass" in text:
        return _pip(env, "nvidia-cutlass") + "   # or set CUTLASS_PATH to a CUTLASS checkout"
    if "triton" in text:
        return _pip(env, "triton")
    return None


@node_check("deepspeed-op-incompatible", Severity.WARNING, tags=("deepspeed", "jit"),
            why="An op that is neither prebuilt nor buildable here fails the moment a config uses it "
                "(async_io for NVMe offload, cpu_adam for optimizer offload, fused_adam...).",
            fix="read the op's warnings; DS_BUILD_<OP>=1 pip install deepspeed shows the full build error")
def check_ds_ops(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """Every DeepSpeed op is prebuilt or can be JIT-built here."""
    env = usable_env(facts)
    require(env.deepspeed_version, "DeepSpeed version")
    ops = require(env.deepspeed_ops, "DeepSpeed op report")
    for op in ops:
        if op.installed or op.compatible:
            continue
        why = "; ".join(w.rstrip(". ") for w in op.warnings) if op.warnings else "ds_report gives no reason"
        yield Problem(f"DeepSpeed op {op.name} cannot be built here: {why}", where=f"op {op.name}",
                      fix=_op_fix(env, op.warnings))


@node_check("ninja-missing", Severity.ERROR, tags=("deepspeed", "jit", "path"),
            why="torch JIT-builds DeepSpeed ops with ninja found on PATH; over pdsh the PATH is the "
                "non-interactive one, so remote nodes fail with 'Ninja is required to load C++ extensions'.",
            fix="pip install ninja into the environment and put the environment's bin first on PATH in "
                "~/.deepspeed_env")
def check_ninja(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """ninja is on the PATH the launcher's non-interactive shell gets."""
    env = usable_env(facts)
    if _all_ops_prebuilt(env):
        raise NotApplicable("every DeepSpeed op is prebuilt: nothing is JIT-built")
    if not known(env.ninja_path):
        bindir = posixpath.dirname(env.interpreter)
        yield Problem(f"ninja is not on the non-interactive PATH of {env.interpreter} "
                      f"({env.ninja_path.reason})", where="PATH",
                      fix=f"{_pip(env, 'ninja')} && echo 'PATH={bindir}:$PATH' >> ~/.deepspeed_env")
