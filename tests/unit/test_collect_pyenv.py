"""The training interpreter is inspected by running the probe inside it, never by importing torch here."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clusterkit.core.facts_codec import from_jsonable
from clusterkit.node.collect.node import CollectOptions
from clusterkit.node.collect.pyenv import (
    PROBE_MARKER,
    collect_python_env,
    facts_from_probe,
    parse_probe_output,
    probe_source,
    run_probe,
)
from clusterkit.node.facts import PythonEnvFacts, Unavailable, known, to_jsonable

SYSTEM_PYTHON = "/usr/bin/python3"
PYTHON38 = "/root/.pyenv/versions/3.8.18/bin/python"
HAS_TRAINING_STACK = all(importlib.util.find_spec(m) is not None for m in ("torch", "deepspeed"))


def _has_module(python: str, module: str) -> bool:
    code = f"import importlib.util,sys; sys.exit(0 if importlib.util.find_spec({module!r}) else 1)"
    return subprocess.run([python, "-c", code], check=False).returncode == 0


def _fields_other_than_identity(facts: PythonEnvFacts) -> dict[str, object]:
    return {k: v for k, v in vars(facts).items() if k not in ("interpreter", "exists", "probed_at")}


@pytest.fixture(scope="module")
def training_env() -> PythonEnvFacts:
    """The probe run for real in this test's own interpreter (the venv with torch and DeepSpeed)."""
    if not HAS_TRAINING_STACK:
        pytest.skip("this interpreter has no torch + deepspeed")
    return collect_python_env(CollectOptions(python=sys.executable, section_timeout_s=60))


def test_training_env_reports_torch_and_its_cuda_build(training_env: PythonEnvFacts) -> None:
    assert training_env.exists
    assert training_env.version == "{}.{}.{}".format(*sys.version_info[:3])
    assert training_env.prefix == sys.prefix
    assert training_env.torch_version == importlib.metadata.version("torch")
    if "+cpu" in importlib.metadata.version("torch"):
        assert training_env.torch_cuda is None
        assert training_env.torch_cuda_available is False
        assert training_env.torch_device_count == 0
        assert training_env.torch_arch_list == []
        assert training_env.cpp_ext_cuda_home is None
        assert isinstance(training_env.nccl_version, Unavailable)
        assert "CPU build" in training_env.nccl_version.reason


def test_training_env_reports_deepspeed_and_its_ops(training_env: PythonEnvFacts) -> None:
    assert training_env.deepspeed_version == importlib.metadata.version("deepspeed")
    assert known(training_env.deepspeed_ops)
    ops = {op.name: op for op in training_env.deepspeed_ops}
    assert "cpu_adam" in ops
    assert known(training_env.deepspeed_info)
    assert training_env.deepspeed_info["torch version"] == importlib.metadata.version("torch")
    if Path("/usr/include/libaio.h").exists():
        assert ops["async_io"].compatible
    else:
        assert not ops["async_io"].compatible
        assert any("libaio" in warning for warning in ops["async_io"].warnings)


def test_env_hash_is_a_sha256_that_is_stable_between_runs(training_env: PythonEnvFacts) -> None:
    assert isinstance(training_env.env_hash, str) and re.fullmatch(r"[0-9a-f]{64}", training_env.env_hash)
    again = run_probe(sys.executable, timeout_s=60)
    assert known(again) and again["env_hash"]["sha256"] == training_env.env_hash


def test_ninja_is_looked_up_on_the_probes_path(training_env: PythonEnvFacts) -> None:
    import shutil

    expected = shutil.which("ninja")
    if expected:
        assert training_env.ninja_path == expected
    else:
        assert isinstance(training_env.ninja_path, Unavailable)


def test_training_env_facts_survive_the_json_round_trip(training_env: PythonEnvFacts) -> None:
    data = json.loads(json.dumps(to_jsonable(training_env)))
    assert from_jsonable(PythonEnvFacts, data) == training_env


@pytest.mark.skipif(not Path(SYSTEM_PYTHON).exists(), reason=f"no {SYSTEM_PYTHON}")
def test_an_interpreter_without_torch_gives_reasons_not_a_crash() -> None:
    if _has_module(SYSTEM_PYTHON, "torch"):
        pytest.skip(f"{SYSTEM_PYTHON} has torch here")
    facts = collect_python_env(CollectOptions(python=SYSTEM_PYTHON))
    assert facts.exists and known(facts.version) and known(facts.env_hash)
    for name in ("torch_version", "torch_cuda", "torch_cuda_available", "torch_device_count",
                 "torch_arch_list", "nccl_version", "cpp_ext_cuda_home"):
        value = getattr(facts, name)
        assert isinstance(value, Unavailable), name
        assert "No module named 'torch'" in value.reason
    assert isinstance(facts.deepspeed_version, Unavailable)
    assert isinstance(facts.deepspeed_ops, Unavailable)
    assert "deepspeed" in facts.deepspeed_ops.reason


@pytest.mark.skipif(not (Path(SYSTEM_PYTHON).exists() and HAS_TRAINING_STACK), reason="needs both envs")
def test_two_different_environments_hash_differently(training_env: PythonEnvFacts) -> None:
    other = collect_python_env(CollectOptions(python=SYSTEM_PYTHON))
    assert known(other.env_hash) and other.env_hash != training_env.env_hash


@pytest.mark.skipif(not Path(PYTHON38).exists(), reason=f"no {PYTHON38}")
def test_the_probe_runs_on_python_3_8() -> None:
    facts = collect_python_env(CollectOptions(python=PYTHON38))
    assert facts.version == "3.8.18"
    assert known(facts.env_hash)


def test_a_missing_interpreter_makes_every_field_say_so() -> None:
    facts = collect_python_env(CollectOptions(python="/x/bin/python"))
    assert facts.interpreter == "/x/bin/python"
    assert facts.exists is False
    for name, value in _fields_other_than_identity(facts).items():
        assert value == Unavailable("interpreter /x/bin/python not found on this node"), name


def _script(tmp_path: Path, body: str) -> str:
    path = tmp_path / "python"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_a_hanging_interpreter_is_reported_within_the_section_deadline(tmp_path: Path) -> None:
    python = _script(tmp_path, "sleep 30\n")
    facts = collect_python_env(CollectOptions(python=python, section_timeout_s=3))
    assert facts.exists
    assert isinstance(facts.torch_version, Unavailable)
    assert "did not finish within 1s" in facts.torch_version.reason


def test_an_interpreter_that_cannot_run_the_probe_shows_its_error(tmp_path: Path) -> None:
    python = _script(tmp_path, "echo 'SyntaxError: invalid syntax' >&2\nexit 1\n")
    facts = collect_python_env(CollectOptions(python=python))
    assert isinstance(facts.version, Unavailable)
    assert "exited 1" in facts.version.reason and "SyntaxError" in facts.version.reason


@pytest.mark.skipif(not Path(SYSTEM_PYTHON).exists(), reason=f"no {SYSTEM_PYTHON}")
def test_the_probe_sees_the_launch_directory_first_on_sys_path_like_the_launcher(tmp_path: Path) -> None:
    shadow = tmp_path / "torch"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ImportError('a torch/ directory in the launch dir')\n")
    facts = collect_python_env(CollectOptions(python=SYSTEM_PYTHON, cwd=str(tmp_path)))
    assert isinstance(facts.torch_version, Unavailable)
    assert "a torch/ directory in the launch dir" in facts.torch_version.reason


@pytest.mark.skipif(not HAS_TRAINING_STACK, reason="this interpreter has no torch + deepspeed")
def test_library_output_does_not_reach_the_probes_stdout() -> None:
    # DeepSpeed logs "Setting accelerator to CPU" to stdout on import; the probe sends it to stderr.
    result = subprocess.run([sys.executable, "-c", probe_source()], capture_output=True, text=True,
                            check=False, timeout=120)
    assert result.returncode == 0
    [line] = result.stdout.splitlines()
    assert line.startswith(PROBE_MARKER)
    assert known(parse_probe_output(result.stdout))


def test_the_probe_source_is_found_inside_a_zipapp_as_the_agent_ships(tmp_path: Path) -> None:
    from clusterkit.cluster.remote.agent import agent_zipapp
    from clusterkit.node.collect import pyenv

    archive = tmp_path / "agent.pyz"
    archive.write_bytes(agent_zipapp())
    code = (f"import sys; sys.path.insert(0, sys.argv[1]); from {pyenv.__name__} import probe_source; "
            f"import {pyenv.__name__} as m; print(m.__file__); print(probe_source() == open(sys.argv[2]).read())")
    probe = Path(pyenv.__file__).with_name("pyprobe.py")
    result = subprocess.run([sys.executable, "-c", code, str(archive), str(probe)], capture_output=True, text=True,
                            check=True)
    inside = archive / (pyenv.__name__.replace(".", "/") + ".py")
    assert result.stdout.splitlines() == [str(inside), "True"]


def test_probe_output_of_the_wrong_type_becomes_unavailable() -> None:
    facts = facts_from_probe("/p", {"version": "3.12.1", "torch_device_count": "two", "torch_cuda": None,
                                    "torch_cuda_available": True, "torch_arch_list": ["sm_90", 7],
                                    "ninja_path": None, "ds_report": "garbage"})
    assert facts.version == "3.12.1"
    assert facts.torch_cuda is None
    assert facts.torch_cuda_available is True
    assert isinstance(facts.torch_device_count, Unavailable)
    assert isinstance(facts.torch_arch_list, Unavailable)
    assert isinstance(facts.prefix, Unavailable) and "no prefix" in facts.prefix.reason
    assert facts.ninja_path == Unavailable("ninja not found on PATH of the training interpreter")
    assert isinstance(facts.deepspeed_ops, Unavailable) and "no op table" in facts.deepspeed_ops.reason


def test_a_reason_from_the_probe_is_passed_on_verbatim() -> None:
    facts = facts_from_probe("/p", {"nccl_version": {"unavailable": "torch.cuda.nccl.version() failed: X"}})
    assert facts.nccl_version == Unavailable("torch.cuda.nccl.version() failed: X")


def test_the_last_marker_line_wins_and_other_lines_are_ignored() -> None:
    stdout = f"junk\n{PROBE_MARKER}{{\"version\": \"1\"}}\nmore\n{PROBE_MARKER}{{\"version\": \"2\"}}\n"
    assert parse_probe_output(stdout) == {"version": "2"}
    assert isinstance(parse_probe_output("no marker"), Unavailable)
    assert isinstance(parse_probe_output(PROBE_MARKER + "[1]"), Unavailable)
    assert isinstance(parse_probe_output(PROBE_MARKER + "{oops"), Unavailable)


@given(st.text())
def test_arbitrary_probe_output_never_raises(text: str) -> None:
    parsed = parse_probe_output(text)
    if known(parsed):
        facts_from_probe("/p", parsed)


@given(st.dictionaries(st.sampled_from(["version", "prefix", "env_hash", "torch_version", "torch_cuda",
                                        "torch_device_count", "torch_arch_list", "ninja_path", "ds_report",
                                        "cpp_ext_cuda_home", "torch_cuda_available"]),
                       st.recursive(st.none() | st.booleans() | st.integers() | st.text(),
                                    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
                                    max_leaves=5)))
def test_any_json_the_probe_could_print_gives_typed_facts(data: dict[str, object]) -> None:
    facts = facts_from_probe("/p", data)
    assert from_jsonable(PythonEnvFacts, json.loads(json.dumps(to_jsonable(facts)))) == facts
