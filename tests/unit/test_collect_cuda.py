"""CUDA libraries the loader resolves, nvcc and its version, and CUDA_HOME found the way torch finds it."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from clusterkit.core.facts_codec import from_jsonable
from clusterkit.node.collect.cuda import (
    collect_cuda,
    find_cuda_home,
    find_nvcc,
    library_base,
    parse_ldconfig,
    parse_nvcc_version,
    scan_library_path,
)
from clusterkit.node.collect.node import CollectOptions
from clusterkit.node.facts import CudaFacts, Unavailable, known, to_jsonable

H100 = Path(__file__).resolve().parents[1] / "fixtures" / "h100-x1"
LDCONFIG_H100 = (H100 / "ldconfig-p-filtered.txt").read_text()
NVCC_H100 = (H100 / "nvcc-version.txt").read_text()


def _executable(path: Path, text: str = "#!/bin/sh\nexit 0\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


# ------------------------------------------------------------------------------------------ ldconfig


def test_h100_loader_cache_lists_every_cuda_library_in_cache_order() -> None:
    libraries = parse_ldconfig(LDCONFIG_H100, want_64bit=True)
    assert len(libraries) == 16
    assert {library_base(lib.soname) for lib in libraries} == {
        "libcudart", "libnccl", "libcublas", "libcublasLt", "libcuda", "libnvidia-ml"}
    assert all(lib.source == "ldconfig" for lib in libraries)
    first_cudart = next(lib for lib in libraries if lib.soname == "libcudart.so.13")
    assert first_cudart.path == "/usr/local/cuda/targets/x86_64-linux/lib/libcudart.so.13"
    cuda = [lib.path for lib in libraries if lib.soname == "libcuda.so.1"]
    assert cuda == ["/usr/local/nvidia/lib64/libcuda.so.1", "/lib/libcuda.so.1"]


def test_library_base_keeps_libcuda_apart_from_libcudart() -> None:
    assert library_base("libcudart.so.13") == "libcudart"
    assert library_base("libcuda.so.1") == "libcuda"
    assert library_base("libcublasLt.so.13.0.2") == "libcublasLt"


def test_unwanted_and_32_bit_entries_are_skipped() -> None:
    text = ("3 libs found in cache `/etc/ld.so.cache'\n"
            "\tlibcuda.so.1 (libc6) => /usr/lib/i386-linux-gnu/libcuda.so.1\n"
            "\tlibcuda.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libcuda.so.1\n"
            "\tlibcudnn.so.9 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libcudnn.so.9\n"
            "\tlibnccl.so.2 (libc6,x86-64, OS ABI: Linux 3.2.0) => /opt/nccl/lib/libnccl.so.2\n"
            "\tlibcublas.so.12 (libc6,AArch64) => /usr/lib/aarch64-linux-gnu/libcublas.so.12\n")
    assert [(lib.soname, lib.path) for lib in parse_ldconfig(text, want_64bit=True)] == [
        ("libcuda.so.1", "/usr/lib/x86_64-linux-gnu/libcuda.so.1"),
        ("libnccl.so.2", "/opt/nccl/lib/libnccl.so.2"),
        ("libcublas.so.12", "/usr/lib/aarch64-linux-gnu/libcublas.so.12"),
    ]
    assert len(parse_ldconfig(text, want_64bit=False)) == 4


def test_ld_library_path_directories_are_scanned_in_order(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    for directory, names in ((first, ["libnccl.so.2", "libnccl.so.2.27.5", "libfoo.so"]),
                             (second, ["libcudart.so.12", "libcudart_static.a", "README"])):
        directory.mkdir()
        for name in names:
            (directory / name).write_text("")
    found = scan_library_path(f"{first}::{tmp_path / 'missing'}:{second}")
    assert [(lib.soname, lib.source) for lib in found] == [
        ("libnccl.so.2", "LD_LIBRARY_PATH"), ("libnccl.so.2.27.5", "LD_LIBRARY_PATH"),
        ("libcudart.so.12", "LD_LIBRARY_PATH")]
    assert found[2].path == str(second / "libcudart.so.12")


# -------------------------------------------------------------------------------------------- nvcc


def test_h100_nvcc_version_is_the_release() -> None:
    assert parse_nvcc_version(NVCC_H100) == "13.0"


def test_output_without_a_release_is_a_reason() -> None:
    version = parse_nvcc_version("bash: nvcc: command not found")
    assert isinstance(version, Unavailable) and "release" in version.reason


def test_nvcc_is_taken_from_cuda_home_before_path(tmp_path: Path) -> None:
    home_nvcc = _executable(tmp_path / "cuda-12.4" / "bin" / "nvcc")
    path_nvcc = _executable(tmp_path / "bin" / "nvcc")
    env = {"CUDA_HOME": str(tmp_path / "cuda-12.4"), "PATH": str(tmp_path / "bin")}
    assert find_nvcc(env, str(tmp_path / "none")) == str(home_nvcc)
    assert find_nvcc({"PATH": str(tmp_path / "bin")}, str(tmp_path / "none")) == str(path_nvcc)
    missing = find_nvcc({"PATH": ""}, str(tmp_path / "none"))
    assert isinstance(missing, Unavailable) and "PATH" in missing.reason


def test_nvcc_in_the_default_cuda_home_is_found_without_path(tmp_path: Path) -> None:
    nvcc = _executable(tmp_path / "cuda" / "bin" / "nvcc")
    assert find_nvcc({"PATH": ""}, str(tmp_path / "cuda")) == str(nvcc)


# --------------------------------------------------------------------------------------- CUDA_HOME


def test_cuda_home_follows_torch_rules(tmp_path: Path) -> None:
    _executable(tmp_path / "wrapper" / "bin" / "nvcc")
    default = tmp_path / "cuda"
    # 1. CUDA_HOME, then CUDA_PATH, taken as given even if missing (torch does not check).
    assert find_cuda_home({"CUDA_HOME": "/nope", "CUDA_PATH": "/x"}, str(default)) == "/nope"
    assert find_cuda_home({"CUDA_PATH": "/x"}, str(default)) == "/x"
    # 2. The grandparent of `which nvcc`, without resolving symlinks or wrappers.
    assert find_cuda_home({"PATH": str(tmp_path / "wrapper" / "bin")}, str(default)) == str(tmp_path / "wrapper")
    # 3. The default, only if it exists.
    missing = find_cuda_home({"PATH": ""}, str(default))
    assert isinstance(missing, Unavailable)
    default.mkdir()
    assert find_cuda_home({"PATH": ""}, str(default)) == str(default)


# ------------------------------------------------------------------------------- collect_cuda


def test_collect_cuda_runs_the_nvcc_it_finds(tmp_path: Path) -> None:
    nvcc_text = NVCC_H100.replace("'", "")
    _executable(tmp_path / "cuda" / "bin" / "nvcc", f"#!/bin/sh\ncat <<'EOF'\n{nvcc_text}EOF\n")
    libdir = tmp_path / "lib"
    libdir.mkdir()
    (libdir / "libcudart.so.13").write_text("")
    env = {"CUDA_HOME": str(tmp_path / "cuda"), "PATH": "", "LD_LIBRARY_PATH": str(libdir)}
    facts = collect_cuda(CollectOptions(), environ=env, default_cuda_home=str(tmp_path / "none"))
    assert facts.nvcc_path == str(tmp_path / "cuda" / "bin" / "nvcc")
    assert facts.nvcc_version == "13.0"
    assert facts.cuda_home == str(tmp_path / "cuda")
    assert known(facts.libraries)
    assert facts.libraries[0].path == str(libdir / "libcudart.so.13")
    assert facts.libraries[0].source == "LD_LIBRARY_PATH"


def test_a_failing_nvcc_is_a_reason_with_its_output(tmp_path: Path) -> None:
    _executable(tmp_path / "bin" / "nvcc", "#!/bin/sh\necho 'nvcc fatal: no license' >&2\nexit 3\n")
    facts = collect_cuda(CollectOptions(), environ={"PATH": str(tmp_path / "bin")},
                         default_cuda_home=str(tmp_path / "none"))
    assert isinstance(facts.nvcc_version, Unavailable)
    assert "exited 3" in facts.nvcc_version.reason and "no license" in facts.nvcc_version.reason


def test_without_ldconfig_the_libraries_are_unavailable_but_say_what_ld_library_path_gave(
        tmp_path: Path) -> None:
    (tmp_path / "libnccl.so.2").write_text("")
    facts = collect_cuda(CollectOptions(), environ={"PATH": "", "LD_LIBRARY_PATH": str(tmp_path)},
                         default_cuda_home=str(tmp_path / "none"),
                         ldconfig_candidates=["/nonexistent/ldconfig"])
    assert isinstance(facts.libraries, Unavailable)
    assert "/nonexistent/ldconfig not found" in facts.libraries.reason
    assert str(tmp_path / "libnccl.so.2") in facts.libraries.reason
    assert isinstance(facts.nvcc_path, Unavailable) and isinstance(facts.nvcc_version, Unavailable)


# ------------------------------------------------------------------------------- the real machine


def test_collect_cuda_on_this_machine_agrees_with_ldconfig_and_nvcc() -> None:
    facts = collect_cuda(CollectOptions())
    assert known(facts.libraries)
    ldconfig = shutil.which("ldconfig") or "/sbin/ldconfig"
    listing = subprocess.run([ldconfig, "-p"], capture_output=True, text=True, check=True).stdout
    for lib in facts.libraries:
        if lib.source == "ldconfig":
            assert f"{lib.soname} (" in listing and lib.path in listing
    nvcc = shutil.which("nvcc")
    if nvcc:
        assert facts.nvcc_path == nvcc or facts.nvcc_path.endswith("/bin/nvcc")  # type: ignore[union-attr]
        release = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout
        assert facts.nvcc_version == parse_nvcc_version(release)
    assert from_jsonable(CudaFacts, json.loads(json.dumps(to_jsonable(facts)))) == facts


# ------------------------------------------------------------------------------------------ fuzzing


@given(st.text())
def test_malformed_ldconfig_and_nvcc_text_never_raises(text: str) -> None:
    parse_ldconfig(text)
    parse_nvcc_version(text)


LDCONFIG_PIECES = [*LDCONFIG_H100.splitlines(), "\tlibcuda.so.1 (libc6,x86-64) =>", "=>", "(", "\t(x) => y",
                   "\tlibnccl.so ( => /x", "\tlibcudart.so.13 (libc6,x86-64) => "]


@given(st.lists(st.sampled_from(LDCONFIG_PIECES), max_size=30))
def test_shuffled_ldconfig_lines_only_ever_yield_wanted_libraries(lines: list[str]) -> None:
    for lib in parse_ldconfig("\n".join(lines), want_64bit=True):
        assert library_base(lib.soname) in {"libcudart", "libnccl", "libcublas", "libcublasLt", "libcuda",
                                            "libnvidia-ml"}
        assert lib.path
