"""The bootstrap playbook is validated with file:line errors; the shipped one names real steps."""

from __future__ import annotations

import pytest

from clusterkit.bootstrap.playbook import load_playbook, parse_playbook
from clusterkit.bootstrap.runner import STEPS
from clusterkit.errors import InputError

KNOWN = set(STEPS)


def test_shipped_playbook_runs_every_step_once_in_a_sensible_order() -> None:
    ids = [s.id for s in load_playbook(None, KNOWN)]
    assert sorted(ids) == sorted(KNOWN)
    assert ids.index("reachability") < ids.index("host-keys") < ids.index("authorize-head")
    assert ids.index("authorize-all") < ids.index("ssh-mesh") < ids.index("pdsh")
    assert ids[-1] == "deepspeed-env"


def test_code_sync_only_runs_with_sync() -> None:
    sync = next(s for s in load_playbook(None, KNOWN) if s.id == "code-sync")
    assert sync.when == "sync"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("steps:\n  - id: reachability\n  - id: teleport\n", "play.yaml:3: unknown step 'teleport'"),
        ("steps:\n  - id: pdsh\n  - id: pdsh\n", "play.yaml:3: step 'pdsh' listed twice"),
        ("steps:\n  - id: pdsh\n    timeout: -1\n", "play.yaml:2: timeout must be a positive number"),
        ("steps:\n  - id: pdsh\n    retries: 3\n", "play.yaml:2: unknown key(s) retries"),
        ("steps:\n  - id: pdsh\n    when: always\n", "play.yaml:2: when: 'always'"),
        ("steps: [\n", "play.yaml:2: not valid YAML"),
        ("- just a list\n", "play.yaml:1: expected a mapping with a 'steps' list"),
    ],
)
def test_bad_playbooks_name_the_line(text: str, needle: str) -> None:
    with pytest.raises(InputError) as err:
        parse_playbook(text, "play.yaml", KNOWN)
    assert needle in str(err.value)
