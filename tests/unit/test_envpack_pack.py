"""Packing a real conda env (made offline by rattler) and a venv; refusals; unpacking to a prefix."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from clusterkit.envpack.pack import Manifest, PackOptions, PackRefused, manifest_path, node_env_command, pack_env
from clusterkit.errors import UsageError
from clusterkit.node import env_unpack as node_env
from clusterkit.node.collect import pyprobe
from tests import synthetic_conda


@pytest.fixture(scope="module")
def conda_env() -> Path:
    return synthetic_conda.cached_env()


@pytest.fixture(scope="module")
def packed(conda_env: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Manifest]:
    return pack_env(conda_env, PackOptions(tmp_path_factory.mktemp("packs")))


def copy_env(env: Path, target: Path) -> Path:
    shutil.copytree(env, target, symlinks=True)
    return target


def test_a_conda_env_packs_with_zstd_and_the_manifest_records_the_archive_hash(
        packed: tuple[Path, Manifest], conda_env: Path) -> None:
    archive, manifest = packed
    assert manifest.sha256 == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert archive.name == f"{conda_env.name}-{manifest.sha256[:12]}.tar.zst"
    assert Manifest.load(manifest_path(archive)) == manifest
    assert manifest.kind == "conda" and manifest.prefix == str(conda_env)
    assert "zstd level 3" in manifest.packed_with
    assert manifest.package_set["conda"] and manifest.package_set["python_count"] == 1  # ckdemo
    names = subprocess.run(["tar", "-I", "zstd -d", "-tf", str(archive)], capture_output=True, text=True,
                           check=True).stdout.split()
    assert "bin/conda-unpack" in names and "conda-meta/ckdemo-1.0-0.json" in names


def test_console_scripts_with_the_envs_python_are_recorded_to_be_made_absolute_again(
        packed: tuple[Path, Manifest]) -> None:
    version = synthetic_conda._python_version()
    assert packed[1].shebangs == [["bin/ckdemo", f"bin/python{version}", ""]]


def test_an_editable_install_is_refused_with_the_way_out(conda_env: Path, tmp_path: Path) -> None:
    env = copy_env(conda_env, tmp_path / "env")
    dist = next(env.glob("lib/python3*/site-packages")) / "mytrainer-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mytrainer\nVersion: 0.1\n")
    (dist / "direct_url.json").write_text(json.dumps({"url": "file:///home/me/mytrainer",
                                                      "dir_info": {"editable": True}}))
    with pytest.raises(PackRefused, match=r"editable installs.*mytrainer \(code in /home/me/mytrainer\).*"
                                          r"--allow-editable"):
        pack_env(env, PackOptions(tmp_path / "out"))


def test_deleted_managed_files_are_refused_and_listed_then_dropped_only_when_asked(conda_env: Path,
                                                                                   tmp_path: Path) -> None:
    env = copy_env(conda_env, tmp_path / "env")
    (env / "share" / "ckdemo" / "prefix.txt").unlink()
    with pytest.raises(PackRefused) as refused:
        pack_env(env, PackOptions(tmp_path / "out"))
    message = str(refused.value)
    assert "ckdemo-1.0: share/ckdemo/prefix.txt" in message
    assert "conda install --force-reinstall" in message and "--ignore-missing-files" in message
    archive, manifest = pack_env(env, PackOptions(tmp_path / "out", ignore_missing_files=True))
    assert manifest.dropped_files == ["ckdemo-1.0: share/ckdemo/prefix.txt"]
    names = subprocess.run(["tar", "-I", "zstd -d", "-tf", str(archive)], capture_output=True, text=True,
                           check=True).stdout.split()
    assert "share/ckdemo/prefix.txt" not in names


def test_a_removed_package_cache_is_refused_with_the_way_out(conda_env: Path, tmp_path: Path) -> None:
    env = copy_env(conda_env, tmp_path / "env")
    record_path = next((env / "conda-meta").glob("ckdemo-*.json"))
    record = json.loads(record_path.read_text())
    record["link"]["source"] = record["extracted_package_dir"] = str(tmp_path / "pkgs" / "ckdemo-1.0-0")
    record_path.write_text(json.dumps(record))
    with pytest.raises(PackRefused, match=r"package cache of 1 package.*ckdemo-1.0-0.*--allow-uncached"):
        pack_env(env, PackOptions(tmp_path / "out"))


def test_a_venv_packs_as_it_is_and_names_its_base_interpreter(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    archive, manifest = pack_env(venv, PackOptions(tmp_path / "out"))
    assert manifest.kind == "venv"
    assert manifest.base_python == str(Path(venv / "bin" / "python").resolve())
    with tarfile.open(fileobj=_zstd_reader(archive), mode="r|") as tar:
        links = {m.name: m.linkname for m in tar if m.issym()}
    assert links["bin/python"] == str(Path(venv / "bin" / "python").readlink())


def _zstd_reader(path: Path) -> object:
    import zstandard

    return zstandard.ZstdDecompressor().stream_reader(open(path, "rb"))


def test_the_node_package_hash_is_the_doctors(tmp_path: Path) -> None:
    assert node_env.python_package_hash()["sha256"] == pyprobe.env_hash()["sha256"]


def run_node_env(python: str, spec: dict[str, object]) -> dict[str, object]:
    done = subprocess.run(node_env_command(python, spec), shell=True, capture_output=True, text=True, check=False)
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("@@ckenv "))
    result: dict[str, object] = json.loads(line[len("@@ckenv "):])
    return result


def test_unpack_rewrites_every_placeholder_for_the_real_prefix_before_it_appears_there(
        packed: tuple[Path, Manifest]) -> None:
    archive, manifest = packed
    prefix = synthetic_conda.ENV_ROOT / f"u{manifest.sha256[:6]}"
    shutil.rmtree(prefix, ignore_errors=True)
    try:
        spec = {"op": "unpack", "archive": str(archive), "prefix": str(prefix), "kind": "conda",
                "unpacked_bytes": manifest.unpacked_bytes, "shebangs": manifest.shebangs,
                "marker": manifest.installed_marker()}
        result = run_node_env("python3", spec)
        assert result["ok"], result
        assert (prefix / "share/ckdemo/prefix.txt").read_text() == f"prefix={prefix}\n"
        assert (prefix / "bin/ckdemo").read_text().splitlines()[0] == \
            f"#!{prefix}/bin/python{synthetic_conda._python_version()}"
        assert f"{prefix}/lib\0".encode() in (prefix / "lib/ckdemo/prefix.bin").read_bytes()
        ran = subprocess.run([str(prefix / "bin/ckdemo")], capture_output=True, text=True, check=True, env={})
        assert ran.stdout.startswith(f"ckdemo 1.0 python {prefix}/bin/python")
        assert json.loads((prefix / node_env.INSTALLED_MARKER).read_text())["sha256"] == manifest.sha256
        assert not list(prefix.parent.glob(f".{prefix.name}.clusterkit-*"))
    finally:
        shutil.rmtree(prefix, ignore_errors=True)


def test_a_failed_unpack_leaves_nothing_at_the_real_path(packed: tuple[Path, Manifest], tmp_path: Path) -> None:
    archive, manifest = packed
    broken = tmp_path / archive.name
    broken.write_bytes(archive.read_bytes()[: manifest.size // 2])
    prefix = tmp_path / "env"
    spec = {"op": "unpack", "archive": str(broken), "prefix": str(prefix), "kind": "conda",
            "unpacked_bytes": manifest.unpacked_bytes, "shebangs": [], "marker": manifest.installed_marker(),
            "host": "node9"}
    result = run_node_env("python3", spec)
    assert not result["ok"] and str(result["error"]).startswith("unpacking on node9 failed: extracting")
    assert not prefix.exists() and not list(tmp_path.glob(".env.clusterkit-*"))


def test_node_scripts_travel_as_shell_safe_words() -> None:
    command = node_env_command("python3", {"op": "verify", "imports": ["torch"]})
    blob, encoded = command.split()[-2:]
    assert json.loads(base64.b64decode(encoded)) == {"op": "verify", "imports": ["torch"]}
    assert set(blob) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")


def test_bootstrap_reuses_an_archive_only_while_the_env_is_unchanged(tmp_path: Path) -> None:
    from clusterkit.envpack.bootstrap_step import cached_archive

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    archive, manifest = pack_env(venv, PackOptions(tmp_path / "cache"))
    assert cached_archive(venv, tmp_path / "cache") == (archive, manifest)
    whole = archive.read_bytes()
    archive.write_bytes(whole[:len(whole) // 2])  # issue 19, M4: a cut-short archive is not reused (nor pushed)
    assert cached_archive(venv, tmp_path / "cache") is None
    archive.write_bytes(whole)
    (venv / "lib" / "added.txt").write_text("changed since it was packed\n")
    assert cached_archive(venv, tmp_path / "cache") is None


def unpack_spec(archive: Path, manifest: Manifest, prefix: Path, **extra: object) -> dict[str, object]:
    return {"op": "unpack", "archive": str(archive), "prefix": str(prefix), "kind": "conda",
            "unpacked_bytes": manifest.unpacked_bytes, "shebangs": manifest.shebangs,
            "marker": manifest.installed_marker(), "host": "node9", **extra}


def test_what_clusterkit_did_not_install_is_refused_then_moved_aside_only_when_asked(
        packed: tuple[Path, Manifest]) -> None:
    # issue 19, W2: a directory of the user's files at the prefix was replaced without a word
    archive, manifest = packed
    prefix = synthetic_conda.ENV_ROOT / f"w{manifest.sha256[:6]}"
    shutil.rmtree(prefix, ignore_errors=True)
    (prefix / "data").mkdir(parents=True)
    (prefix / "precious.txt").write_text("keep")
    try:
        refused = run_node_env("python3", unpack_spec(archive, manifest, prefix))
        assert not refused["ok"] and refused["refused"]
        assert refused["error"] == (f"{prefix} on node9 holds a directory of 2 entries that clusterkit did not "
                                    "install: not replaced")
        assert (prefix / "precious.txt").read_text() == "keep"
        replaced = run_node_env("python3", unpack_spec(archive, manifest, prefix, replace_existing=True))
        assert replaced["ok"], replaced
        aside = next(prefix.parent.glob(f"{prefix.name}.clusterkit-replaced-*"))
        assert (aside / "precious.txt").read_text() == "keep" and (aside / "data").is_dir()
        assert f"was moved to {aside}" in " ".join(replaced["notes"])  # type: ignore[arg-type]
        assert (prefix / node_env.INSTALLED_MARKER).is_file()
    finally:
        shutil.rmtree(prefix, ignore_errors=True)
        for aside in prefix.parent.glob(f"{prefix.name}.clusterkit-replaced-*"):
            shutil.rmtree(aside)


def test_a_survey_tells_a_whole_copy_from_one_damaged_under_its_marker(packed: tuple[Path, Manifest]) -> None:
    # issue 19, W1: the marker alone said "up to date" after a package was uninstalled from the copy
    from clusterkit.envpack.judge import copy_problems

    archive, manifest = packed
    prefix = synthetic_conda.ENV_ROOT / f"v{manifest.sha256[:6]}"
    shutil.rmtree(prefix, ignore_errors=True)
    at_prefix = Manifest(**{**manifest.__dict__, "prefix": str(prefix)})
    try:
        assert run_node_env("python3", unpack_spec(archive, at_prefix, prefix))["ok"]
        survey = {"op": "survey", "prefix": str(prefix), "check_env": True}
        whole = run_node_env("python3", survey)
        assert whole["at_prefix"] == {"state": "clusterkit"}
        # the env's python of the unpack, at another path than packed: only the prefix differs
        assert copy_problems(whole, at_prefix) == []
        for dist in prefix.glob("lib/python3*/site-packages/ckdemo-1.0.dist-info"):
            shutil.rmtree(dist)
        damaged = copy_problems(run_node_env("python3", survey), at_prefix)
        assert damaged[0].startswith("Python package set differs from the head's (0 vs 1 distributions)"), damaged
        assert damaged[1].endswith("when it was unpacked"), damaged
    finally:
        shutil.rmtree(prefix, ignore_errors=True)


@pytest.mark.parametrize(("field", "value"), [("size", "abc"), ("unpacked_bytes", None), ("files", True),
                                              ("package_set", [])])
def test_a_manifest_with_a_value_of_the_wrong_type_is_an_input_error(packed: tuple[Path, Manifest], tmp_path: Path,
                                                                     field: str, value: object) -> None:
    # issue 19, C1: "size": "abc" or "unpacked_bytes": null became a TypeError (exit 3)
    data = json.loads(packed[1].to_json())
    data[field] = value
    path = tmp_path / "edited.tar.zst.json"
    path.write_text(json.dumps(data))
    with pytest.raises(UsageError, match=rf'^{path}: "{field}" is .* not .*pack the env again$'):
        Manifest.load(path)
