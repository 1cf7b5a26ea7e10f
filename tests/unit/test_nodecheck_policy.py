"""The health check's drain and resume rules, and the reason it gives Slurm."""

from __future__ import annotations

import pytest

from clusterkit.node.facts import SlurmNodeFacts
from clusterkit.nodecheck.policy import REASON_MAX, REASON_PREFIX, Act, Fault, decide, drain_reason

XID = Fault("xid-critical", "GPU 3 (3b:00.0)")
SHM = Fault("shm-full", "/dev/shm")


def node(state: str, reason: str = "", user: str = "") -> SlurmNodeFacts:
    return SlurmNodeFacts(name="gpu07", state=state, reason=reason, reason_user=user)


def test_the_reason_starts_with_the_prefix_and_names_the_check_and_the_gpu() -> None:
    assert drain_reason([XID]) == "clusterkit: xid-critical GPU 3 (3b:00.0)"


def test_several_gpus_of_one_check_fold_into_one_list() -> None:
    faults = [Fault("row-remap-pending", f"GPU {i} ({i}b:00.0)") for i in (0, 3, 5)]
    assert drain_reason(faults) == "clusterkit: row-remap-pending GPU 0,3,5"


def test_what_does_not_fit_is_counted_and_the_gravest_comes_first() -> None:
    faults = [Fault("xid-critical", "GPU 3"), SHM, Fault("ib-no-active-port", "mlx5_0"),
              Fault("libcuda-not-resolvable", "ldconfig -p")]
    assert drain_reason(faults) == "clusterkit: xid-critical GPU 3; shm-full /dev/shm; +2 more"
    assert drain_reason([XID, *faults[1:]]) == "clusterkit: xid-critical GPU 3 (3b:00.0); +3 more"
    assert all(len(drain_reason(faults[:n])) <= REASON_MAX for n in range(1, 5))


def test_gpus_and_other_places_of_one_check_fold_and_the_pci_domain_is_dropped() -> None:
    faults = [Fault("xid-critical", "GPU 0 (0000:1b:00.0)"), Fault("xid-critical", "GPU 1 (0000:3b:00.0)"),
              Fault("xid-critical", "PCI 0000:86:00.0")]
    assert drain_reason(faults) == "clusterkit: xid-critical GPU 0,1, PCI 86:00.0"
    assert drain_reason(faults[:1]) == "clusterkit: xid-critical GPU 0 (1b:00.0)"


def test_a_first_fault_longer_than_the_limit_is_cut_and_still_counts_the_rest() -> None:
    reason = drain_reason([Fault("x" * 80, "GPU 0"), SHM], limit=40)
    assert len(reason) <= 40 and reason.startswith(REASON_PREFIX + " xxx") and reason.endswith("; +1 more")


def test_the_reason_is_plain_ascii_on_one_line() -> None:
    assert drain_reason([Fault("hung", "nvidia\nsection \u2265 5s")]) == "clusterkit: hung nvidia section ? 5s"


@pytest.mark.parametrize("state", ["IDLE", "MIXED", "ALLOCATED", "IDLE+COMPLETING"])
def test_an_error_drains_a_node_in_service(state: str) -> None:
    decision = decide(node(state), [XID])
    assert decision.act is Act.DRAIN and decision.reason == drain_reason([XID])


def test_a_clean_run_resumes_a_node_clusterkit_drained() -> None:
    assert decide(node("IDLE+DRAIN", drain_reason([SHM]), "root"), []).act is Act.RESUME


def test_a_clean_run_never_resumes_a_node_an_administrator_drained() -> None:
    decision = decide(node("IDLE+DRAIN", "bad DIMM, ticket 4411", "alice"), [])
    assert decision.act is Act.NOTHING and "bad DIMM" in decision.why


def test_an_error_on_an_administrators_drain_keeps_their_reason() -> None:
    decision = decide(node("MIXED+DRAIN", "reboot after patching", "alice"), [XID])
    assert decision.act is Act.NOTHING and "reboot after patching" in decision.why


def test_a_new_error_on_clusterkits_own_drain_replaces_the_reason() -> None:
    decision = decide(node("IDLE+DRAIN", drain_reason([SHM])), [XID])
    assert decision.act is Act.DRAIN and decision.reason == drain_reason([XID])


def test_the_same_error_on_clusterkits_own_drain_changes_nothing() -> None:
    assert decide(node("IDLE+DRAIN", drain_reason([XID])), [XID]).act is Act.NOTHING


@pytest.mark.parametrize("state", ["DOWN", "DOWN+NOT_RESPONDING", "IDLE*", "DOWN+DRAIN", "IDLE+POWERED_DOWN",
                                   "FUTURE", "IDLE+FAIL"])
@pytest.mark.parametrize("faults", [[], [XID]])
def test_a_node_slurm_has_down_is_left_alone(state: str, faults: list[Fault]) -> None:
    assert decide(node(state, drain_reason([XID])), faults).act is Act.NOTHING


def test_an_unknown_state_changes_nothing_even_with_errors() -> None:
    decision = decide(None, [XID], "scontrol gave no answer within 8s")
    assert decision.act is Act.NOTHING and "8s" in decision.why
