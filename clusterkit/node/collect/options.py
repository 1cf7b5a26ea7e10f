"""What a collection pass reads and how long each part may take: shared by every collector.

Stdlib only, Python 3.8 syntax: ships inside the agent.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field


@dataclass
class CollectOptions:
    """What to collect and how long each part may take."""

    #: The training interpreter to inspect (DeepSpeed's launcher runs this one on every node).
    python: str = field(default_factory=lambda: sys.executable)
    #: The directory jobs are launched from (code path); ``.deepspeed_env`` is looked up there too.
    cwd: str = field(default_factory=os.getcwd)
    #: The training script a launch will run, as named (relative to ``cwd``); None when none is named.
    script: str | None = None
    #: Deadline for one section; the slowest section (Python env probe) sets the node's wall time.
    section_timeout_s: float = 30.0
    #: Deadline for a single NVML call: NVML hangs when the driver or a GPU is wedged.
    nvml_timeout_s: float = 5.0
    #: Sections to collect (None = every section; see clusterkit.node.collect.node.SECTIONS).
    sections: list[str] | None = None
    #: Reuse the last Python-env probe while the env is unchanged (see collect/probe_cache.py).
    use_probe_cache: bool = True
    #: Hostfile names of the other nodes: known_hosts is read for them (SSH trust facts).
    peers: list[str] = field(default_factory=list)
    #: ``ADDRESS:PORT`` the head reached this node's sshd on: the host keys it serves are read there.
    sshd_address: str | None = None
