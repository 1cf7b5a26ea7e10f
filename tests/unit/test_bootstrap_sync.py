"""``bootstrap --sync DIR``: a home directory only when asked, and never what must stay on this machine.

The sync across real nodes, from a login node's home, is proven in tests/cluster/test_field.py.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from clusterkit.bootstrap.sync_rules import home_refusal, parse_hidden, rsync_excludes, without_hidden
from clusterkit.cli import main
from clusterkit.errors import ExitCode

RSYNC_DRY_RUN = """\
[sender] hiding directory .ssh because of pattern .ssh/
[sender] hiding file code/id_rsa because of pattern id_rsa
>f+++++++++ train.py
cd+++++++++ code/
"""


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A home as bootstrap leaves it on the head: keys, clusterkit's state, .deepspeed_env, and code."""
    home = tmp_path / "home" / "me"
    for name, text in {".ssh/id_ed25519": "PRIVATE KEY", ".ssh/id_ed25519.pub": "ssh-ed25519 AAAA me",
                       ".ssh/known_hosts": "node2 ssh-ed25519 AAAA", ".clusterkit/home-id": "home-1234",
                       ".deepspeed_env": "PATH=/env/bin:/usr/bin", ".deepspeed_env.clusterkit-20250101T000000-ab.bak":
                       "PATH=/usr/bin", ".aws/credentials": "[default]", ".netrc": "machine x password y",
                       ".cache/clusterkit/envpack/env.tar.zst": "archive", "project/train.py": "print(1)",
                       "project/keys/id_rsa": "PRIVATE KEY", "notes.txt": "mine"}.items():
        path = home / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return home


def test_the_home_directory_and_the_directories_holding_it_are_refused(home: Path) -> None:
    # issue 19, W4
    said = home_refusal(home, home)
    assert said is not None
    assert said.startswith(f"--sync {home}: that is your home directory")
    assert "~/.ssh with its private keys" in said and "--sync-home" in said
    assert f"holds your home directory {home}" in (home_refusal(home.parent, home) or "")
    assert home_refusal(Path("/"), home) is not None
    assert home_refusal(home / "project", home) is None
    assert home_refusal(home.parent / "other", home) is None


@pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is not installed")
def test_private_keys_credentials_and_clusterkits_state_are_never_copied(home: Path, tmp_path: Path) -> None:
    # issue 19, W4: the copy a node gets, from rsync itself with the excludes code-sync passes it.
    node = tmp_path / "node-home"
    node.mkdir()
    done = subprocess.run(["rsync", "-a", "--itemize-changes", "--debug=FILTER1", *rsync_excludes(), f"{home}/",
                           f"{node}/"], capture_output=True, text=True, check=True)
    copied = sorted(str(p.relative_to(node)) for p in node.rglob("*") if p.is_file())
    assert copied == ["notes.txt", "project/train.py"]
    assert sorted(parse_hidden(done.stdout)) == [
        ".aws", ".cache/clusterkit", ".clusterkit", ".deepspeed_env",
        ".deepspeed_env.clusterkit-20250101T000000-ab.bak", ".netrc", ".ssh", "project/keys/id_rsa"]


def test_rsyncs_debug_lines_are_the_left_out_paths_not_changes() -> None:
    assert parse_hidden(RSYNC_DRY_RUN) == [".ssh", "code/id_rsa"]
    assert without_hidden(RSYNC_DRY_RUN) == [">f+++++++++ train.py", "cd+++++++++ code/"]


@pytest.mark.parametrize("dry_run", [["--dry-run"], []])
def test_bootstrap_refuses_to_sync_a_home_before_it_connects(home: Path, tmp_path: Path, dry_run: list[str],
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    # issue 19, W4: the dry run says it too, and nothing is reached (the hostfile names no real host).
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(home)
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("no-such-node.invalid slots=1\nother-node.invalid slots=1\n")
    assert main(["bootstrap", str(hostfile), "--sync", ".", *dry_run]) == ExitCode.USAGE
    err = " ".join(capsys.readouterr().err.split())
    assert f"--sync . ({home}): that is your home directory" in err
    assert "Traceback" not in err

