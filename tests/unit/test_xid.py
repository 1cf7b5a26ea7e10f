"""XID events are found in every kernel-log format; an unreadable log says why; nothing raises."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clusterkit.node.collect.xid import MAX_EVENTS, parse_xid_events, read_dev_kmsg, read_kernel_log
from clusterkit.node.facts import Unavailable, XidEvent

SAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "synthetic-row-remap-pending"


def test_dmesg_sample_yields_xid_48_63_64_and_79_in_order() -> None:
    events = parse_xid_events((SAMPLES / "dmesg.txt").read_text(encoding="utf-8"))
    assert [(event.code, event.bus_id) for event in events] == [
        (48, "00000000:1B:00.0"), (63, "00000000:1B:00.0"), (64, "00000000:3B:00.0"),
        (79, "00000000:86:00.0"), (79, "00000000:86:00.0")]


def test_message_drops_the_pid_and_process_name_but_raw_keeps_the_line() -> None:
    events = parse_xid_events((SAMPLES / "dmesg.txt").read_text(encoding="utf-8"))
    dbe = events[0]
    assert dbe.message.startswith("An uncorrectable double bit error (DBE)")
    assert dbe.raw.startswith("[ 8812.331097] NVRM: Xid (PCI:0000:1b:00): 48, pid=48211, name=python,")
    assert events[2].message.startswith("Row Remapper Error:")  # pid='<unknown>', name=<unknown>


def test_older_form_without_pid_keeps_the_whole_message() -> None:
    (event,) = parse_xid_events("[  52.1] NVRM: Xid (PCI:0000:86:00): 79, GPU has fallen off the bus.\n")
    assert event == XidEvent(bus_id="00000000:86:00.0", code=79, message="GPU has fallen off the bus.",
                             raw="[  52.1] NVRM: Xid (PCI:0000:86:00): 79, GPU has fallen off the bus.")


def test_journalctl_and_dev_kmsg_formats_give_the_same_events() -> None:
    journal = parse_xid_events((SAMPLES / "journalctl-k.txt").read_text(encoding="utf-8"))
    kmsg = parse_xid_events((SAMPLES / "dev-kmsg.txt").read_text(encoding="utf-8"))
    expected = [(48, "00000000:1B:00.0"), (79, "00000000:86:00.0")]
    assert [(event.code, event.bus_id) for event in journal] == expected
    assert [(event.code, event.bus_id) for event in kmsg] == expected
    assert kmsg[1].message == "GPU has fallen off the bus."


def test_very_old_drivers_without_the_pci_prefix_are_understood() -> None:
    (event,) = parse_xid_events("NVRM: Xid (0000:03:00): 13, 0001 00000000 0000a0c0 00000000\n")
    assert (event.bus_id, event.code) == ("00000000:03:00.0", 13)


def test_lines_about_gpus_that_are_not_xids_are_ignored() -> None:
    assert parse_xid_events("NVRM: GPU 0000:86:00.0: GPU has fallen off the bus.\nNVRM: Xid nonsense\n") == []


def test_a_flood_keeps_only_the_most_recent_events() -> None:
    text = "".join(f"NVRM: Xid (PCI:0000:3b:00): {n}, message {n}\n" for n in range(MAX_EVENTS + 50))
    events = parse_xid_events(text)
    assert len(events) == MAX_EVENTS
    assert events[-1].code == MAX_EVENTS + 49


def test_dev_kmsg_records_are_read_until_none_are_left(tmp_path: Path) -> None:
    sample = tmp_path / "kmsg"
    sample.write_text((SAMPLES / "dev-kmsg.txt").read_text(encoding="utf-8"), encoding="utf-8")
    text = read_dev_kmsg(1.0, str(sample))
    assert isinstance(text, str)
    assert [event.code for event in parse_xid_events(text)] == [48, 79]


def test_missing_dev_kmsg_says_why(tmp_path: Path) -> None:
    result = read_dev_kmsg(1.0, str(tmp_path / "absent"))
    assert isinstance(result, Unavailable)
    assert "No such file" in result.reason


def _fake_tool(directory: Path, name: str, message: str) -> None:
    script = directory / name
    script.write_text(f"#!/bin/sh\necho '{message}' >&2\nexit 1\n", encoding="utf-8")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


def test_unreadable_kernel_log_is_unavailable_with_every_reason(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # The edge: a node where dmesg_restrict and journal permissions forbid reading the log.
    _fake_tool(tmp_path, "dmesg", "dmesg: read kernel buffer failed: Operation not permitted")
    _fake_tool(tmp_path, "journalctl", "No journal files were opened due to insufficient permissions.")
    monkeypatch.setenv("PATH", str(tmp_path))
    result = read_kernel_log(2.0, kmsg_path=str(tmp_path / "no-kmsg"))
    assert isinstance(result, Unavailable)
    assert result.reason.startswith("kernel log unreadable: ")
    assert "Operation not permitted" in result.reason
    assert "no-kmsg" in result.reason
    assert "insufficient permissions" in result.reason


def test_missing_dmesg_falls_back_to_dev_kmsg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    sample = tmp_path / "kmsg"
    record = "4,1,2,-;NVRM: Xid (PCI:0000:3b:00): 79, GPU has fallen off the bus.\n"
    sample.write_text(record, encoding="utf-8")
    text = read_kernel_log(2.0, kmsg_path=str(sample))
    assert isinstance(text, str)
    assert [event.code for event in parse_xid_events(text)] == [79]


@pytest.mark.skipif(os.geteuid() != 0, reason="reading the kernel log may need root here")
def test_this_machines_kernel_log_is_readable_as_root() -> None:
    assert isinstance(read_kernel_log(5.0), str)


XID_PIECES = st.sampled_from(["NVRM: Xid (", "PCI:", "0000:3b:00", ".0", "): ", "79", ", ", "pid=",
                              "'<unknown>'", "name=", "python", "GPU has fallen off the bus.", "\n",
                              "[ 1.0] ", "9" * 30, "é"])


@given(st.one_of(st.text(), st.lists(XID_PIECES, max_size=40).map("".join)))
def test_kernel_log_parser_never_raises(text: str) -> None:
    for event in parse_xid_events(text):
        assert event.code >= 0
        assert event.raw
