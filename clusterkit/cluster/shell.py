"""Shell lines every transport runs on nodes the same way (pure: nothing here runs anything)."""

from __future__ import annotations

import re
import shlex


def node_command(host: str, command: str) -> str:
    """``command`` with ``CLUSTERKIT_NODE`` set to the name the head knows the host by."""
    return f"export CLUSTERKIT_NODE={shlex.quote(host)}; {command}"


def kill_by_run_id_command(run_id: str) -> str:
    """Shell command that kills this user's processes carrying ``run_id`` and says how many it found.

    The pattern is written so that it does not match the shell running it.
    """
    if not re.fullmatch(r"[0-9a-f]{6,64}", run_id):
        raise ValueError(f"bad run id {run_id!r}")
    pattern = f"ck-run-i[d]={run_id}"
    return (f'n=$(pgrep -u "$(id -u)" -f -- {pattern!r} | wc -l); '
            f'if [ "$n" -gt 0 ]; then pkill -KILL -u "$(id -u)" -f -- {pattern!r}; fi; echo "killed $n"')
