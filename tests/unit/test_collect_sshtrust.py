"""SSH trust facts read keys, authorized_keys and known_hosts the way OpenSSH does."""

from __future__ import annotations

import base64
import hashlib
import hmac
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clusterkit.node.collect.sshtrust import collect_ssh_trust, fingerprint, key_fingerprints, known_host_keys


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, str]]:
    """Three real ed25519 public keys: name -> (public key line, fingerprint as ssh-keygen prints it)."""
    out = {}
    for name in ("a", "b", "c"):
        path = tmp_path_factory.mktemp("keys") / name
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)], check=True)
        printed = subprocess.run(["ssh-keygen", "-lf", str(path)], capture_output=True, text=True, check=True)
        out[name] = (path.with_suffix(".pub").read_text().strip(), printed.stdout.split()[1])
    return out


def blob(line: str) -> str:
    return line.split()[1]


def hashed(name: str, salt: bytes = b"0123456789abcdefghij") -> str:
    digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


def test_fingerprints_match_ssh_keygen(keys: dict[str, tuple[str, str]]) -> None:
    line, printed = keys["a"]
    assert fingerprint(blob(line)) == printed


def test_authorized_keys_options_and_comments_are_skipped(keys: dict[str, tuple[str, str]]) -> None:
    a, b = keys["a"][0], keys["b"][0]
    lines = ["# managed by hand", "", f'from="10.0.0.0/8",no-pty,command="echo hi there" {a}', b, "garbage"]
    assert key_fingerprints(lines) == [keys["a"][1], keys["b"][1]]


def test_known_hosts_plain_hashed_wildcard_negated_and_revoked(keys: dict[str, tuple[str, str]]) -> None:
    a, b, c = (keys[k][0].split()[:2] for k in "abc")
    lines = [
        f"node1,10.0.0.1 {a[0]} {a[1]}",
        f"{hashed('node2')} {b[0]} {b[1]}",
        f"gpu-*,!gpu-bad {a[0]} {a[1]}",
        f"@revoked * {c[0]} {c[1]}",  # a revoked key is refused for every host
        f"node9 {c[0]} {c[1]}",
        f"@cert-authority *.example {a[0]} {a[1]}",
    ]
    known = known_host_keys(lines, ["node1", "node2", "gpu-7", "gpu-bad", "node9", "x.example", "nodeX"])
    assert known == {"node1": [keys["a"][1]], "node2": [keys["b"][1]], "gpu-7": [keys["a"][1]], "gpu-bad": [],
                     "node9": [], "x.example": [], "nodeX": []}


def test_a_home_is_read_into_trust_facts(tmp_path: Path, keys: dict[str, tuple[str, str]]) -> None:
    ssh = tmp_path / ".ssh"
    ssh.mkdir()
    (ssh / "id_ed25519.pub").write_text(keys["a"][0] + "\n")
    (ssh / "authorized_keys").write_text(keys["b"][0] + "\n")
    (ssh / "known_hosts").write_text(f"node2 {keys['b'][0]}\n")
    config = tmp_path / "sshd_config"
    host_key = tmp_path / "host_key"
    host_key.with_suffix(".pub").write_text(keys["b"][0] + "\n")
    config.write_text(f"HostKey {host_key}\n")
    trust = collect_ssh_trust(str(tmp_path), ["node2", "node3"], str(config), str(tmp_path / "none"))
    assert trust.user_keys == [keys["a"][1]]
    assert trust.authorized_keys == [keys["b"][1]]
    assert trust.host_keys == [keys["b"][1]]
    assert trust.known_hosts == {"node2": [keys["b"][1]], "node3": []}


@given(st.lists(st.text(max_size=80), max_size=10), st.lists(st.text(min_size=1, max_size=12), max_size=4))
def test_any_file_content_never_raises(lines: list[str], names: list[str]) -> None:
    key_fingerprints(lines)
    known_host_keys(lines, names)
