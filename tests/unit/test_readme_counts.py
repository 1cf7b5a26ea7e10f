"""The README's count of checks is the registry's, so it cannot drift as checks are added."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from clusterkit.checks import load_checks
from clusterkit.checks.registry import select_checks

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_counts_the_checks_of_each_scope_as_registered() -> None:
    load_checks()
    registered = Counter(spec.scope for spec in select_checks())
    said = re.search(r"\((\d+) node checks\), then (\d+) cluster-wide checks and (\d+) of the launching machine",
                     README.read_text(encoding="utf-8"))
    assert said, "README's command table no longer states the number of checks"
    assert (int(said[1]), int(said[2]), int(said[3])) == (registered["node"], registered["cluster"],
                                                          registered["launch"])
