"""CUDA libraries the dynamic loader resolves, nvcc, and CUDA_HOME as torch would find it.

``libcudart.so.X: cannot open shared object file`` on a remote node and "Installed CUDA version X does
not match the version torch was compiled with" both start here. We never import torch: CUDA_HOME is
found with torch.utils.cpp_extension's own rules. Stdlib only, Python 3.8 syntax: ships inside the agent.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path
from typing import Mapping, Sequence

from clusterkit.node.collect.deadline import run_command
from clusterkit.node.collect.options import CollectOptions
from clusterkit.node.facts import CudaFacts, Maybe, SharedLibFacts, Unavailable, known

#: Library base names (soname up to ``.so``) that a DeepSpeed job loads.
WANTED_LIBRARIES = ("libcudart", "libnccl", "libcublas", "libcublasLt", "libcuda", "libnvidia-ml")
#: ``ldconfig`` is often not on a non-root PATH.
LDCONFIG_CANDIDATES = ("ldconfig", "/sbin/ldconfig", "/usr/sbin/ldconfig")
DEFAULT_CUDA_HOME = "/usr/local/cuda"

# "\tlibcudart.so.13 (libc6,x86-64) => /usr/local/cuda/lib64/libcudart.so.13"; flags may hold
# "OS ABI: Linux 3.2.0" or "hwcap: 0x..." too.
_LDCONFIG_LINE = re.compile(r"^\s*(?P<soname>\S+)\s+\((?P<flags>[^)]*)\)\s+=>\s+(?P<path>\S.*?)\s*$")


def library_base(soname: str) -> str:
    """``libcublasLt.so.13`` -> ``libcublasLt``."""
    return soname.split(".so", 1)[0]


def parse_ldconfig(text: str, wanted: Sequence[str] = WANTED_LIBRARIES,
                   want_64bit: bool | None = None) -> list[SharedLibFacts]:
    """The wanted libraries in ``ldconfig -p`` output, in the cache's order (the loader's preference).

    With ``want_64bit`` (default: this interpreter is 64-bit) entries built for a 32-bit ABI, whose
    flags lack ``64`` (``(libc6)`` against ``(libc6,x86-64)``), are skipped: the loader ignores them.
    """
    if want_64bit is None:
        want_64bit = sys.maxsize > 2**32
    found = []
    for line in text.splitlines():
        match = _LDCONFIG_LINE.match(line)
        if not match or library_base(match.group("soname")) not in wanted:
            continue
        if want_64bit and "64" not in match.group("flags"):
            continue
        found.append(SharedLibFacts(soname=match.group("soname"), path=match.group("path"),
                                    source="ldconfig"))
    return found


def scan_library_path(ld_library_path: str, wanted: Sequence[str] = WANTED_LIBRARIES) -> list[SharedLibFacts]:
    """Wanted libraries in the directories of ``LD_LIBRARY_PATH``, searched before the ldconfig cache."""
    found = []
    for directory in ld_library_path.split(":"):
        if not directory:
            continue
        try:
            names = sorted(p.name for p in Path(directory).iterdir())
        except OSError:
            continue
        for name in names:
            if ".so" in name and library_base(name) in wanted:
                found.append(SharedLibFacts(soname=name, path=str(Path(directory, name)),
                                            source="LD_LIBRARY_PATH"))
    return found


def read_ldconfig_cache(timeout_s: float = 5.0,
                        candidates: Sequence[str] = LDCONFIG_CANDIDATES) -> Maybe[list[SharedLibFacts]]:
    """The wanted libraries in ``ldconfig -p``; ``Unavailable`` when no ldconfig could be run."""
    problems = []
    for program in candidates:
        result = run_command([program, "-p"], timeout_s=timeout_s)
        if not known(result):
            problems.append(result.reason)
            continue
        if not result.ok:
            problems.append(f"{program} -p exited {result.returncode}: {result.tail(1)}")
            continue
        return parse_ldconfig(result.stdout)
    return Unavailable("cannot read the loader cache: " + "; ".join(problems))


def parse_nvcc_version(text: str) -> Maybe[str]:
    """``Cuda compilation tools, release 13.0, V13.0.88`` -> ``"13.0"``."""
    match = re.search(r"\brelease\s+(\d+\.\d+)", text)
    if not match:
        return Unavailable("nvcc --version printed no 'release X.Y': " + repr(text.strip()[-120:]))
    return match.group(1)


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(str(path), os.X_OK)


def find_nvcc(environ: Mapping[str, str], default_cuda_home: str = DEFAULT_CUDA_HOME) -> Maybe[str]:
    """nvcc as a job would find it: ``$CUDA_HOME/bin``, ``$CUDA_PATH/bin``, PATH, then the default home."""
    for variable in ("CUDA_HOME", "CUDA_PATH"):
        home = environ.get(variable)
        if home and _executable(Path(home, "bin", "nvcc")):
            return str(Path(home, "bin", "nvcc"))
    on_path = shutil.which("nvcc", path=environ.get("PATH", ""))
    if on_path:
        return on_path
    if _executable(Path(default_cuda_home, "bin", "nvcc")):
        return str(Path(default_cuda_home, "bin", "nvcc"))
    return Unavailable(f"nvcc not in $CUDA_HOME/bin, $CUDA_PATH/bin, PATH or {default_cuda_home}/bin")


def find_cuda_home(environ: Mapping[str, str], default_cuda_home: str = DEFAULT_CUDA_HOME) -> Maybe[str]:
    """CUDA_HOME by ``torch.utils.cpp_extension._find_cuda_home``'s rules, without importing torch.

    ``$CUDA_HOME`` or ``$CUDA_PATH`` as given (even if missing), else the grandparent of ``which nvcc``
    (not resolved: a ``/usr/local/bin/nvcc`` wrapper gives ``/usr/local``), else ``/usr/local/cuda``
    if it exists.
    """
    home = environ.get("CUDA_HOME") or environ.get("CUDA_PATH")
    if home:
        return home
    nvcc = shutil.which("nvcc", path=environ.get("PATH", ""))
    if nvcc:
        return str(Path(nvcc).parent.parent)
    if Path(default_cuda_home).exists():
        return default_cuda_home
    return Unavailable(f"no CUDA_HOME or CUDA_PATH, no nvcc on PATH and no {default_cuda_home}")


def collect_cuda(options: CollectOptions, environ: Mapping[str, str] | None = None,
                 default_cuda_home: str = DEFAULT_CUDA_HOME,
                 ldconfig_candidates: Sequence[str] = LDCONFIG_CANDIDATES,
                 command_timeout_s: float = 5.0) -> CudaFacts:
    """Loader-visible CUDA libraries (LD_LIBRARY_PATH first), nvcc and CUDA_HOME for this node."""
    env = os.environ if environ is None else environ
    from_path = scan_library_path(env.get("LD_LIBRARY_PATH", ""))
    cached = read_ldconfig_cache(command_timeout_s, ldconfig_candidates)
    libraries: Maybe[list[SharedLibFacts]]
    if known(cached):
        libraries = from_path + cached
    else:
        # A partial list would read as "libcudart missing"; say what LD_LIBRARY_PATH alone gave.
        seen = ", ".join(lib.path for lib in from_path) or "nothing"
        libraries = Unavailable(f"{cached.reason} (LD_LIBRARY_PATH alone gives {seen})")
    nvcc = find_nvcc(env, default_cuda_home)
    version: Maybe[str] = nvcc
    if known(nvcc):
        result = run_command([nvcc, "--version"], timeout_s=command_timeout_s)
        if not known(result):
            version = result
        elif not result.ok:
            version = Unavailable(f"{nvcc} --version exited {result.returncode}: {result.tail(2)}")
        else:
            version = parse_nvcc_version(result.stdout)
    return CudaFacts(libraries=libraries, nvcc_path=nvcc, nvcc_version=version,
                     cuda_home=find_cuda_home(env, default_cuda_home))
