"""Fixtures for tests on the namespace cluster; every test under tests/cluster is marked ``cluster``.

- ``cluster``: 3 nodes for a test module (for tests that do not break nodes for good); one cluster serves
  every module in turn, renewed for each (healed, homes, /tmp, /opt emptied), instead of one started and
  stopped per module;
- ``clean_cluster``: that cluster healed (thawed, booted, unshaped, default sshd) with empty homes;
- ``cluster_python``: the module cluster with a training env at /opt/ckenv; its interpreter path;
- ``start_cluster``: a factory for a private cluster, stopped after the test (for kill/freeze tests).

Where no cluster can run (not root, no network namespaces, no sshd) the tests skip with the reason.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.cluster import pyenv
from tests.cluster.harness import Cluster
from tests.cluster.slurm import SlurmCluster
from tests.cluster.system import ClusterUnavailable

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in item.path.parents:
            item.add_marker(pytest.mark.cluster)
    # Tests that need no cluster first: meanwhile DeepSpeed's ops build on the core they leave idle
    # (pytest_collection_finish). Then the proofs of the newest features, then the rest; the planted workload
    # faults last. Under a time budget (tests/conftest.py) what gives way is what has been proven longest.
    # This is the order of a one-process run; scripts/test's xdist workers take the files with the most
    # tests first, which also lets the short ones fill in at the end.
    items.sort(key=lambda item: (_HERE in item.path.parents, _module_rank(item.path.name)))


#: Cluster modules that run first, in this order (the rest keep pytest's order after them).
_FIRST = ("test_any_clone.py", "test_stacks.py", "test_baseline.py", "test_slurm_monitor.py", "test_launch.py")
_LAST = ("test_workload_faults.py",)


def _module_rank(name: str) -> int:
    if name in _FIRST:
        return _FIRST.index(name)
    return len(_FIRST) + 1 if name in _LAST else len(_FIRST)


_OPS_BUILDER = pytest.StashKey[subprocess.Popen[bytes] | None]()


def pytest_collection_finish(session: pytest.Session) -> None:
    """Ops missing from the machine's cache start building now, at the lowest priority (pyenv.py)."""
    if (os.geteuid() == 0 and os.environ.get(pyenv.NO_OPS_BUILD_ENV) != "1"
            and os.environ.get("PYTEST_XDIST_WORKER", "gw0") == "gw0"  # one builder for the run's workers
            and any(_HERE in item.path.parents for item in session.items)):
        session.config.stash[_OPS_BUILDER] = pyenv.build_ops_in_background(pyenv.OPTIMIZER_OPS)


def pytest_sessionfinish(session: pytest.Session) -> None:
    builder = session.config.stash.get(_OPS_BUILDER, None)
    if builder is not None:
        pyenv.stop_building(builder)


def launch_or_skip(n: int, name_prefix: str = "node", *, shared_home: bool = False,
                   shared_tmp: bool = False) -> Cluster:
    """Start a cluster, or skip the test with the reason this machine cannot run one."""
    try:
        return Cluster.launch(n, name_prefix, shared_home=shared_home, shared_tmp=shared_tmp)
    except ClusterUnavailable as exc:
        pytest.skip(str(exc))


@contextmanager
def slurm_on(cluster: Cluster, *, gpus_per_node: int = 0, conf_dir: str | None = None,
             extra_conf: tuple[str, ...] = ()) -> Iterator[SlurmCluster]:
    """Slurm started on ``cluster`` and stopped after, or the test skipped with why it cannot run here."""
    try:
        started = SlurmCluster.launch(cluster, gpus_per_node=gpus_per_node, conf_dir=conf_dir,
                                      extra_conf=extra_conf)
    except ClusterUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="package")
def shared_cluster() -> Iterator[Cluster]:
    started = launch_or_skip(3)
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def cluster(shared_cluster: Cluster) -> Cluster:
    shared_cluster.renew()
    return shared_cluster


@pytest.fixture
def clean_cluster(cluster: Cluster) -> Cluster:
    cluster.heal()
    cluster.reset_homes()
    return cluster


@pytest.fixture(scope="module")
def cluster_python(cluster: Cluster) -> str:
    return cluster.install_python_env()


@pytest.fixture
def start_cluster() -> Iterator[Callable[..., Cluster]]:
    started: list[Cluster] = []

    def start(n: int = 2, name_prefix: str = "node", *, shared_home: bool = False,
              shared_tmp: bool = False) -> Cluster:
        started.append(launch_or_skip(n, name_prefix, shared_home=shared_home, shared_tmp=shared_tmp))
        return started[-1]

    yield start
    for each in reversed(started):
        each.stop()
