"""The agent on nodes: shipped as a content-addressed archive, run with the node's python3, its one
result line parsed and its wire (protocol, facts schema) checked."""

from __future__ import annotations

import functools
import hashlib
import io
import json
import shlex
import time
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clusterkit import __version__
from clusterkit.cluster.remote.ssh import RemoteError

if TYPE_CHECKING:
    from fabric import Connection

PACKAGE_DIR = Path(__file__).resolve().parents[2]
NODE_DIR = PACKAGE_DIR / "node"


@functools.cache
def agent_zipapp() -> bytes:
    """The agent as a zipapp: clusterkit.node.agent, facts, collectors, and pynvml when installed."""
    files = {"__main__.py": "from clusterkit.node.agent import main\nraise SystemExit(main())\n",
             "clusterkit/__init__.py": (PACKAGE_DIR / "__init__.py").read_text()}
    for name in ("__init__.py", "facts.py", "agent.py"):
        files[f"clusterkit/node/{name}"] = (NODE_DIR / name).read_text()
    for path in sorted((NODE_DIR / "collect").glob("*.py")):
        files[f"clusterkit/node/collect/{path.name}"] = path.read_text()
    try:
        import pynvml

        files["pynvml.py"] = Path(pynvml.__file__).read_text()
    except ImportError:
        pass
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, text in files.items():
            # A fixed timestamp keeps the archive, and so its digest and the copy on nodes, the same
            # from one run to the next.
            zf.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), text,
                        compress_type=zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


def agent_digest() -> str:
    return hashlib.sha256(agent_zipapp()).hexdigest()[:16]


def agent_remote_path() -> str:
    """Where the agent lives on a node (an unpacked directory): a shell word, expanded there."""
    return f'"${{TMPDIR:-/tmp}}/clusterkit-$(id -u)/agent-{agent_digest()}"'


def ship_agent(conn: Connection, timeout_s: float) -> str:
    """Unpack the agent into ``$TMPDIR/clusterkit-<uid>/agent-<digest>/`` on the node; return that path.

    Unpacked rather than run from the zip so Python caches its bytecode there: that makes every later
    agent run three times cheaper in CPU, which adds up over a fan-out.
    """
    digest = agent_digest()
    probe = conn.run(
        'd="${TMPDIR:-/tmp}/clusterkit-$(id -u)"; mkdir -p -m 700 "$d" || exit 3; '
        '[ -O "$d" ] || { echo "$d is not owned by $(id -un)" >&2; exit 4; }; chmod 700 "$d"; '
        f'a="$d/agent-{digest}"; if [ -s "$a/__main__.py" ] && [ -O "$a" ]; then echo "present $a"; '
        'else echo "missing $a"; fi',
        hide=True, warn=True, timeout=timeout_s)
    if probe.exited != 0 or not probe.stdout.strip():
        why = probe.stderr.strip() or probe.stdout.strip()
        raise RemoteError(f"cannot prepare the agent directory: {why}")
    state, path = str(probe.stdout).split()[-2:]
    if state == "missing":
        # Names unique to this writer: two clusterkit runs (from one head or several) may ship the same
        # agent to a node at once; each unpacks on its own and the first rename wins.
        scratch = f"{path}.{uuid.uuid4().hex[:12]}"
        zip_path = f"{scratch}.pyz"
        conn.put(io.BytesIO(agent_zipapp()), remote=zip_path)
        q, z, t = shlex.quote(path), shlex.quote(zip_path), shlex.quote(scratch + ".tmp")
        unpack = conn.run(
            f'PY="$(command -v python3)" || {{ echo "no python3 on PATH" >&2; exit 127; }}; '
            f'"$PY" -m zipfile -e {z} {t} && rm -f {z} && chmod -R go-rwx {t} '
            f'&& {{ mv -T {t} {q} 2>/dev/null || rm -rf {t}; }}',
            hide=True, warn=True, timeout=timeout_s)
        if unpack.exited != 0:
            conn.run(f"rm -rf {z} {t}", hide=True, warn=True, timeout=timeout_s)
            if unpack.exited == 127:
                raise RemoteError(f"{conn.host} has no python3 on the non-interactive PATH",
                                  fix=f"install python3 on {conn.host} (the agent needs only the standard library)")
            raise RemoteError(f"cannot unpack the agent on {conn.host}: {unpack.stderr.strip()}",
                              fix=f"check free space and permissions of {path.rsplit('/', 1)[0]} on {conn.host}")
    return path


@dataclass
class AgentReply:
    """What the agent printed, and when (node clock just before printing / head clock on receipt)."""

    result: Any
    node_clock: float | None
    received_at: float

    @property
    def clock_offset_s(self) -> float | None:
        """Node clock minus head clock; off by at most the one-way network delay plus process exit."""
        return None if self.node_clock is None else self.node_clock - self.received_at


def check_wire(payload: dict[str, Any], host: str) -> None:
    """The agent that answered speaks this clusterkit's protocol and facts schema, else say which side
    is older. (clusterkit ships its own agent, so a mismatch is a stale or foreign agent directory.)"""
    from clusterkit.node.agent import AGENT_PROTOCOL
    from clusterkit.node.facts import SCHEMA_VERSION

    theirs = (payload.get("protocol"), payload.get("schema_version"))
    if theirs == (AGENT_PROTOCOL, SCHEMA_VERSION):
        return
    older = isinstance(theirs[0], int) and theirs[0] < AGENT_PROTOCOL
    raise RemoteError(
        f"the agent on {host} speaks protocol {theirs[0]} (facts schema {theirs[1]}), this clusterkit "
        f"{__version__} speaks {AGENT_PROTOCOL} (schema {SCHEMA_VERSION}): the node's agent is "
        + ("older" if older else "newer"),
        fix=(f"on {host}: rm -rf \"${{TMPDIR:-/tmp}}/clusterkit-$(id -u)\" (clusterkit ships its agent again)"
             if older else "upgrade clusterkit on this machine to the version that shipped that agent"))


def parse_agent_output(stdout: str, host: str, received_at: float | None = None) -> AgentReply:
    """Find the agent's result line; a shell that prints banners cannot break this."""
    from clusterkit.node.agent import RESULT_MARKER

    lines = [line for line in stdout.splitlines() if line.startswith(RESULT_MARKER)]
    if not lines:
        tail = " | ".join(stdout.strip().splitlines()[-3:]) or "no output"
        raise RemoteError(f"the agent on {host} printed no result ({tail})")
    payload = json.loads(lines[-1][len(RESULT_MARKER):])
    check_wire(payload, host)
    if "error" in payload:
        raise RemoteError(f"the agent on {host} failed: {payload['error']}")
    clock = payload.get("clock_unix")
    return AgentReply(payload["result"], float(clock) if isinstance(clock, (int, float)) else None,
                      received_at if received_at is not None else time.time())


_NEED_AGENT = "@@clusterkit-need-agent@@"


def agent_command(args: list[str], python: str | None = None) -> str:
    """The shell line that runs ``agent ARGS`` from the agent directory with the node's python3 (or
    ``python``); it prints a marker instead where the agent is not there yet (see :func:`ship_agent`)."""
    path = agent_remote_path()
    fallback = f" || command -v {shlex.quote(python)}" if python else ""
    # Only run an agent we own from a directory we own: /tmp is shared with other users.
    return (f'a={path}; if [ ! -s "$a/__main__.py" ] || [ ! -O "$a" ] || [ ! -O "${{a%/*}}" ]; '
            f'then echo {_NEED_AGENT}; exit 0; fi; '
            f'PY="$(command -v python3{fallback})"; '
            '[ -n "$PY" ] || { echo "no python3 on PATH" >&2; exit 127; }; '
            # -I: the node's PYTHON* variables cannot break the agent, and bytecode gets cached;
            # -S: no site-packages, the agent is stdlib-only (and starts faster without them).
            f'exec "$PY" -I -S "$a" {" ".join(shlex.quote(a) for a in args)}')


def run_agent_reply(conn: Connection, args: list[str], timeout_s: float, python: str | None = None) -> AgentReply:
    """Run ``agent ARGS`` with the node's python3 (shipping the agent first if it is not there yet)."""
    command = agent_command(args, python)
    for _ in range(2):
        result = conn.run(command, hide=True, warn=True, timeout=timeout_s)
        received_at = time.time()
        if _NEED_AGENT not in result.stdout:
            break
        ship_agent(conn, min(timeout_s, 15.0))
    if result.exited == 127 and "no python3" in result.stderr:
        raise RemoteError(f"{conn.host} has no python3 on the non-interactive PATH",
                          fix=f"install python3 on {conn.host} (the agent needs only the standard library)")
    return parse_agent_output(result.stdout, conn.host, received_at)


def run_agent(conn: Connection, args: list[str], timeout_s: float, python: str | None = None) -> Any:
    """Run ``agent ARGS`` on the node and return its result."""
    return run_agent_reply(conn, args, timeout_s, python).result
