"""The bootstrap playbook is validated with file:line errors; the shipped one names real steps."""

from __future__ import annotations

import pytest

from clusterkit.bootstrap.playbook import load_playbook, parse_playbook
from clusterkit.bootstrap.runner import step_needs
from clusterkit.errors import InputError

KNOWN = step_needs()


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
        ("steps:\n  - id: head-key\n  - id: head-key\n", "play.yaml:3: step 'head-key' listed twice"),
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


def test_a_step_listed_before_what_it_needs_is_refused_with_its_line() -> None:
    text = ("steps:\n  - id: reachability\n  - id: host-keys\n  - id: head-key\n  - id: authorize-head\n"
            "  - id: authorize-all\n  - id: node-keys\n")
    with pytest.raises(InputError, match=r"play.yaml:6: step 'authorize-all' needs 'node-keys' before it"):
        parse_playbook(text, "play.yaml", KNOWN)


def test_the_built_in_playbook_lists_every_step_after_what_it_needs() -> None:
    ids = [s.id for s in load_playbook(None, KNOWN)]
    for position, step in enumerate(ids):
        assert set(KNOWN[step]) <= set(ids[:position]), step
