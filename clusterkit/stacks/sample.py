"""A straggler from sampled stacks: the rank whose time goes elsewhere while its peers wait for it.

Each rank's main thread was sampled for some seconds (``py-spy record``, folded stacks with counts). A rank
in step with the others spends about as much of its time waiting in collectives as they do; a rank that
is steadily slower spends almost none there (the others wait for *it*), and its hottest frames say where
its time goes instead. Pure functions.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from clusterkit.stacks.group import place_of
from clusterkit.stacks.model import Frame, RankStack

#: ``name (file:line)``, one folded frame.
FOLDED_FRAME = re.compile(r"^(?P<name>.*) \((?P<file>[^()]*):(?P<line>\d+)\)$")
#: Peers must wait at least this share of their time for a rank to be called their straggler...
MIN_PEER_WAIT = 0.3
#: ... and the rank must wait at most this fraction of what they do.
STRAGGLER_RATIO = 0.5
#: Hottest frames named per straggler.
HOTTEST = 3
#: A rank whose main thread sat in one place for less than this share of its samples was moving.
STILL_SHARE = 0.9


@dataclass
class TimeShare:
    """Where one rank's sampled time went."""

    rank: RankStack
    samples: int
    #: Share of the samples spent inside a collective.
    waiting: float
    #: The innermost frames outside collectives, with their share of all samples, hottest first.
    hottest: list[tuple[Frame, float]] = field(default_factory=list)


def folded_frames(stack: str) -> tuple[bool, list[Frame]]:
    """One folded stack (``thread (TID): NAME;root;...;leaf``) as (main thread?, frames innermost first)."""
    head, _, rest = stack.partition(";")
    match = re.match(r"thread \((?P<tid>\d+)\):\s*(?P<name>.*)$", head)
    if match is None:  # no thread prefix: the whole line is frames
        rest, main = stack, True
    else:
        main = match.group("name") == "MainThread"
    frames = []
    for part in rest.split(";"):
        found = FOLDED_FRAME.match(part.strip())
        if found:
            frames.append(Frame(found.group("name"), found.group("file"), int(found.group("line"))))
    return main, frames[::-1]


def time_share(rank: RankStack) -> TimeShare | None:
    """Where the rank's main thread spent its samples; None without samples."""
    total = waiting = 0
    elsewhere: Counter[Frame] = Counter()
    for stack, count in rank.folded.items():
        main, frames = folded_frames(stack)
        if not main or not frames:
            continue
        total += count
        if place_of(frames).kind == "collective":
            waiting += count
        else:
            elsewhere[frames[0]] += count
    if total == 0:
        return None
    return TimeShare(rank, total, waiting / total, [(f, n / total) for f, n in elsewhere.most_common(HOTTEST)])


def moved_while_sampled(rank: RankStack) -> bool:
    """The rank's main thread was seen in more than one place for a good share of its samples (a hung rank
    sits in one; a slow one only looks stuck when two dumps happen to catch it at the same line)."""
    places: Counter[tuple[Frame, ...]] = Counter()
    for stack, count in rank.folded.items():
        main, frames = folded_frames(stack)
        if main and frames:
            places[tuple(frames)] += count
    total = sum(places.values())
    return total > 0 and places.most_common(1)[0][1] / total < STILL_SHARE


def find_stragglers(shares: Sequence[TimeShare]) -> list[tuple[TimeShare, float]]:
    """Ranks that wait far less than their peers (who wait a good share of their time): each with the
    median share its peers wait."""
    found = []
    for share in shares:
        peers = [s.waiting for s in shares if s is not share]
        if not peers:
            continue
        typical = statistics.median(peers)
        if typical >= MIN_PEER_WAIT and share.waiting <= typical * STRAGGLER_RATIO:
            found.append((share, typical))
    return found
