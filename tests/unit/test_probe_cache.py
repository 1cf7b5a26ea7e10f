"""The Python-env probe is reused only while the env provably has not changed."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import pytest

from clusterkit.node.collect import probe_cache
from clusterkit.node.collect.node import CollectOptions
from clusterkit.node.collect.pyenv import collect_python_env, probe_source


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


@pytest.fixture
def small_env(tmp_path: Path) -> Path:
    """A real venv without torch (probing it is quick), whose site-packages a test can change."""
    env = tmp_path / "env"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(env)], check=True)
    return env


def options(env: Path, cache: bool = True) -> CollectOptions:
    return CollectOptions(python=str(env / "bin" / "python"), cwd=str(env), use_probe_cache=cache)


def site_packages(env: Path) -> Path:
    return next(env.glob("lib/python3*/site-packages"))


def test_an_unchanged_env_is_answered_from_the_cache(private_tmp: Path, small_env: Path) -> None:
    first = collect_python_env(options(small_env))
    second = collect_python_env(options(small_env))
    assert first.probed_at > 0
    assert second.probed_at == first.probed_at
    assert second == first


def test_installing_a_package_invalidates_the_cached_probe(private_tmp: Path, small_env: Path) -> None:
    first = collect_python_env(options(small_env))
    (site_packages(small_env) / "newpkg").mkdir()
    second = collect_python_env(options(small_env))
    assert second.probed_at > first.probed_at


def test_an_environment_variable_that_steers_cuda_invalidates_it(private_tmp: Path, small_env: Path) -> None:
    key = probe_cache.fingerprint(str(small_env / "bin/python"), str(small_env), probe_source(), {})
    other = probe_cache.fingerprint(str(small_env / "bin/python"), str(small_env), probe_source(),
                                    {"CUDA_VISIBLE_DEVICES": "1"})
    assert key != other


def test_fresh_collection_always_probes(private_tmp: Path, small_env: Path) -> None:
    first = collect_python_env(options(small_env))
    second = collect_python_env(options(small_env, cache=False))
    assert second.probed_at > first.probed_at


def test_a_cache_directory_others_can_write_is_ignored(private_tmp: Path, small_env: Path) -> None:
    first = collect_python_env(options(small_env))
    probe_cache.cache_dir().parent.chmod(0o777)
    second = collect_python_env(options(small_env))
    assert second.probed_at > first.probed_at


def test_an_old_cached_probe_expires(private_tmp: Path, small_env: Path) -> None:
    collect_python_env(options(small_env))
    key = probe_cache.fingerprint(str(small_env / "bin/python"), str(small_env), probe_source())
    assert isinstance(key, str)
    assert probe_cache.load(key) is not None
    assert probe_cache.load(key, now=10**12) is None


# --- the training interpreter's sys.path, asked once and reused while what decides it holds still ----------


@pytest.fixture
def counted_python(small_env: Path) -> tuple[str, Path]:
    """The env's interpreter behind a wrapper that counts how often it is started."""
    log = small_env / "starts.log"
    wrapper = small_env / "bin" / "python-counted"
    wrapper.write_text(f'#!/bin/sh\necho started >> {log}\nexec {small_env}/bin/python "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper), log


def starts(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_sys_path_is_read_from_the_interpreter_once_then_reused(private_tmp: Path, small_env: Path,
                                                                counted_python: tuple[str, Path]) -> None:
    python, log = counted_python
    first = probe_cache.training_sys_path(python, str(small_env))
    second = probe_cache.training_sys_path(python, str(small_env))
    assert isinstance(first, list)
    assert str(site_packages(small_env)) in first
    assert second == first
    assert starts(log) == 1


def test_a_new_pth_file_makes_the_interpreter_be_asked_again(private_tmp: Path, small_env: Path,
                                                             counted_python: tuple[str, Path]) -> None:
    python, log = counted_python
    probe_cache.training_sys_path(python, str(small_env))
    extra = small_env / "extra"
    extra.mkdir()
    (site_packages(small_env) / "extra.pth").write_text(f"{extra}\n")
    entries = probe_cache.training_sys_path(python, str(small_env))
    assert isinstance(entries, list)
    assert str(extra) in entries
    assert starts(log) == 2


def test_an_edited_pth_file_makes_the_interpreter_be_asked_again(private_tmp: Path, small_env: Path,
                                                                 counted_python: tuple[str, Path]) -> None:
    python, log = counted_python
    (one, two) = (small_env / "one", small_env / "two")
    one.mkdir()
    two.mkdir()
    pth = site_packages(small_env) / "extra.pth"
    pth.write_text(f"{one}\n")
    probe_cache.training_sys_path(python, str(small_env))
    pth.write_text(f"{one}\n{two}\n")
    entries = probe_cache.training_sys_path(python, str(small_env))
    assert isinstance(entries, list)
    assert str(two) in entries
    assert starts(log) == 2


def test_pythonpath_is_part_of_what_decides_sys_path(private_tmp: Path, small_env: Path,
                                                     counted_python: tuple[str, Path]) -> None:
    python, log = counted_python
    probe_cache.training_sys_path(python, str(small_env), {"HOME": str(small_env)})
    probe_cache.training_sys_path(python, str(small_env), {"HOME": str(small_env), "PYTHONPATH": "/srv/lib"})
    assert starts(log) == 2


def test_an_edited_sitecustomize_makes_the_interpreter_be_asked_again(
        private_tmp: Path, small_env: Path, counted_python: tuple[str, Path]) -> None:
    python, log = counted_python
    customize = site_packages(small_env) / "sitecustomize.py"
    customize.write_text("import sys\n")
    probe_cache.training_sys_path(python, str(small_env))
    customize.write_text("import sys\nsys.path.append('/srv/more')\n")  # in place: the folder's mtime stays
    probe_cache.training_sys_path(python, str(small_env))
    assert starts(log) == 2
