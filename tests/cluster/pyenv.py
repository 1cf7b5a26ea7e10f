"""A training Python env on every node without copying a gigabyte per node.

The env is a real venv at the same absolute path on each node (``/opt/ckenv`` by default, inside the
node's private /opt) whose ``site-packages`` holds a ``.pth`` line naming the shared venv's
site-packages: torch and deepspeed import from the shared venv, while anything put into the node's
own site-packages (a planted torch) shadows them on that node only. clusterkit itself is not importable
from it: the editable install's ``.pth`` in the shared venv is not processed through a path line, just
as a real node does not have clusterkit preinstalled.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from tests.cluster.system import ROOT_PATH, USER_PATH, ClusterError, child_pids, signal_pids

if TYPE_CHECKING:
    from tests.cluster.harness import Cluster, Node

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_ENV = "/opt/ckenv"
SHIMMED_SCRIPTS = ("deepspeed", "ds_report", "torchrun")
PTH_NAME = "clusterkit-test-shared-venv.pth"
#: What deepspeed.comm builds on CPU for every process group.
COMM_OPS = ("ShareMemCommBuilder",)
#: What the ZeRO suite builds too: FusedAdam (stages without offload) and CPUAdam (with offload).
OPTIMIZER_OPS = (*COMM_OPS, "FusedAdamBuilder", "CPUAdamBuilder")
#: On the filesystem every node shares (not under a node's private /opt, /tmp, /home, /root);
#: ``CLUSTERKIT_TEST_OPS_CACHE`` names another, e.g. an empty one to time a run on a fresh machine.
OPS_CACHE = Path(os.environ.get("CLUSTERKIT_TEST_OPS_CACHE", "/var/cache/clusterkit-tests/torch-ops"))
PREBUILT_OPS_PTH = "clusterkit-test-torch-extensions.pth"
#: Set for a pytest run inside another (test_any_clone): the outer session builds the ops, and an inner
#: build would be killed half-way through an op as its session ends.
NO_OPS_BUILD_ENV = "CLUSTERKIT_TEST_NO_OPS_BUILD"


def shared_venv() -> Path:
    """The venv the tests run from (or the repo's .venv when they do not run from one)."""
    if sys.prefix != sys.base_prefix:
        return Path(sys.prefix)
    return REPO_ROOT / ".venv"


def _venv_config(venv: Path) -> dict[str, str]:
    config = {}
    for line in (venv / "pyvenv.cfg").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            config[key.strip()] = value.strip()
    return config


def python_version(venv: Path) -> str:
    """``X.Y`` of the venv's interpreter."""
    return ".".join(_venv_config(venv)["version"].split(".")[:2])


def base_interpreter(venv: Path) -> str:
    """The interpreter the venv was made from (node envs are made from the same one)."""
    config = _venv_config(venv)
    if "executable" in config:
        return config["executable"]
    return f"{config['home']}/python{python_version(venv)}"


def site_packages(prefix: Path | str, version: str) -> Path:
    return Path(prefix) / "lib" / f"python{version}" / "site-packages"


#: Directories each node has a private copy of (see node.py): what lives under them must be mounted in.
PRIVATE_DIRS = ("/home", "/opt", "/tmp", "/root")


def paths_nodes_need() -> list[str]:
    """The repo, the shared venv and the interpreter it was made from, where they sit under a directory
    that nodes have privately (a clone under ``/root``, ``/home/me`` or ``/tmp``, a pyenv under /root).

    Nodes get these bind-mounted at the same path, as on an image or a shared filesystem where they
    are installed for everyone; anywhere else (``/usr``, ``/work``) nodes see them already.
    """
    venv = shared_venv()
    base_prefix = Path(os.path.realpath(base_interpreter(venv))).parent.parent
    wanted = sorted({os.path.realpath(p) for p in (REPO_ROOT, venv, base_prefix)})
    needed: list[str] = []
    for path in wanted:
        if not any(Path(path).is_relative_to(private) for private in PRIVATE_DIRS):
            continue
        if any(Path(path).is_relative_to(outer) for outer in needed):
            continue  # a venv inside the repo comes with it
        needed.append(path)
    return needed


def install(cluster: Cluster, path: str = DEFAULT_ENV, ops: Sequence[str] = ()) -> str:
    """Make the env on the first node, copy it to the others; return its interpreter path.

    ``ops``: DeepSpeed op builders (``ShareMemCommBuilder`` ...) whose JIT builds every node gets
    ready in ``{path}/torch_extensions`` (see prebuilt_ops).
    """
    venv = shared_venv()
    version = python_version(venv)
    first = cluster.nodes[0]
    first.run(f"rm -rf {path} && {base_interpreter(venv)} -m venv --without-pip {path}", user="root",
              timeout=120, check=True)
    env_on_host = first.host_path(path)
    pth = site_packages(env_on_host, version) / PTH_NAME
    pth.write_text(f"{site_packages(venv, version)}\n")
    if ops:  # as on a node where the ops were built before
        (site_packages(env_on_host, version) / PREBUILT_OPS_PTH).write_text(
            f"import os; os.environ.setdefault('TORCH_EXTENSIONS_DIR', {path + '/torch_extensions'!r})\n")
    for script in SHIMMED_SCRIPTS:
        source = venv / "bin" / script
        if source.exists():
            body = source.read_text().split("\n", 1)[1]
            shim = env_on_host / "bin" / script
            shim.write_text(f"#!{path}/bin/python\n{body}")
            shim.chmod(0o755)
    ninja = env_ninja(venv)
    if ninja is not None:
        (env_on_host / "bin" / "ninja").symlink_to(ninja)
    for node in cluster.nodes[1:]:
        target = node.host_path(path)
        shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(env_on_host, target, symlinks=True)
    first.run(f"{path}/bin/python -c 'import sys; assert sys.prefix == \"{path}\", sys.prefix'",
              timeout=60, check=True)
    if ops:
        _install_prebuilt_ops(cluster, path, ops)
    return f"{path}/bin/python"


def env_ninja(venv: Path) -> str | None:
    """The ninja a node's env has in its bin/: the one a node's plain PATH finds, else the venv's.

    One ninja version for every way a rank starts (through ``.deepspeed_env``, which puts the env's
    bin/ first, or with a login PATH): ninja 1.12+ reads an older ninja's ``.ninja_log`` as "build
    log version is too old; starting over" and the other way round, so two versions on one node
    would rebuild every prebuilt op at the first launch of the other kind.
    """
    found = shutil.which("ninja", path=USER_PATH)
    if found is not None:
        return found
    return str(venv / "bin" / "ninja") if (venv / "bin" / "ninja").exists() else None


def _dist_version(site: Path, name: str) -> str:
    found = sorted(site.glob(f"{name}-*.dist-info"))
    return found[0].name[len(name) + 1:-len(".dist-info")] if found else "none"


def _install_prebuilt_ops(cluster: Cluster, path: str, ops: Sequence[str]) -> None:
    """Copy each op's build from the machine's cache (building it there first) into every node's
    ``{path}/torch_extensions``, the env's TORCH_EXTENSIONS_DIR.

    A copy per node, not the cache itself: torch takes a lock file in the op's directory at every
    load, and a rank killed while holding it must not hang every other node's ranks.
    """
    built = prebuilt_ops(ops)
    for node in cluster.nodes:
        extensions = node.host_path(f"{path}/torch_extensions")
        for op in built:
            for op_dir in op.iterdir():
                shutil.rmtree(extensions / op_dir.name, ignore_errors=True)
                shutil.copytree(op_dir, extensions / op_dir.name)  # with mtimes, which ninja compares
        account = pwd.getpwnam(cluster.user)
        for owned in (extensions, *extensions.rglob("*")):
            os.chown(owned, account.pw_uid, account.pw_gid, follow_symlinks=False)


def prebuilt_ops(ops: Sequence[str]) -> list[Path]:
    """Each op's build directory in the machine's cache, built first where missing; the list in order.

    DeepSpeed JIT-builds its CPU ops (the shared-memory comm op in every process group, the optimizer
    ops for ZeRO) with ninja: half a minute to minutes per op on two cores. Each op is built once per
    machine (so at most once per test session) into its own directory ``OPS_CACHE/<key>/<builder>``
    on the filesystem every node shares. A file lock keeps test sessions that need the same op at once
    (or this session and its background builder, see build_ops_in_background) from building it twice
    or reading a half-built one.
    """
    cache = OPS_CACHE / prebuilt_ops_key()
    missing = [name for name in ops if not (cache / name).is_dir()]
    if missing:
        cache.mkdir(parents=True, exist_ok=True)
        for name in missing:  # the lock per op: who needs the first op only does not wait for the rest
            with _locked(OPS_CACHE / ".lock", on_wait=_hurry_background_build):
                if not (cache / name).is_dir():
                    _build_op(name, cache / name)
    return [cache / name for name in ops]


def _build_op(builder: str, done: Path) -> None:
    """Build one op as a node's ranks would: the shared venv's torch and DeepSpeed, the env's ninja
    first on PATH, root's PATH after it. Nodes see the shared venv at the same path, so the
    build.ninja written here is the one torch writes on a node, which then loads the op unbuilt."""
    building = done.with_name(done.name + ".partial")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    venv = shared_venv()
    tools = building / ".bin"
    tools.mkdir()
    ninja = env_ninja(venv)
    if ninja is not None:
        (tools / "ninja").symlink_to(ninja)
    done_run = subprocess.run(
        [str(venv / "bin" / "python"), "-c", f"import deepspeed.ops.op_builder.cpu as B; B.{builder}().load()"],
        env={"HOME": "/root", "USER": "root", "LOGNAME": "root", "SHELL": "/bin/bash", "LANG": "C.UTF-8",
             "PATH": f"{tools}:{ROOT_PATH}", "TORCH_EXTENSIONS_DIR": str(building)},
        cwd=building, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=1800, check=False)
    if done_run.returncode != 0:
        raise ClusterError(f"building DeepSpeed's {builder} failed (exit {done_run.returncode})\n"
                           f"stdout: {done_run.stdout[-2000:]}\nstderr: {done_run.stderr[-3000:]}")
    shutil.rmtree(tools)
    building.rename(done)


def build_ops_in_background(ops: Sequence[str]) -> subprocess.Popen[bytes] | None:
    """Start building the ops missing from the machine's cache at the lowest CPU priority, in a
    process of its own; None when every op is there already.

    Started as a session begins, the build uses what the tests leave of the CPU (a core while the
    unit tests run, the waits of the cluster tests) instead of holding up the first test that needs
    an op; that test waits on the cache's lock for what is still building. The log is beside the cache.
    """
    cache = OPS_CACHE / prebuilt_ops_key()
    if all((cache / name).is_dir() for name in ops):
        return None
    OPS_CACHE.mkdir(parents=True, exist_ok=True)
    with open(OPS_CACHE / f"{cache.name}.log", "ab") as log:
        builder = subprocess.Popen(["nice", "-n", "19", str(shared_venv() / "bin" / "python"), "-m",
                                    "tests.cluster.pyenv", *ops], cwd=REPO_ROOT, stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    # A new session is a scheduling group of its own where the kernel groups by session (autogroup): there a
    # process's nice ranks it within its group only, and the build took half the CPU from the tests (the
    # DeepSpeed launches of the first cluster modules ran 3-10 times slower on a fresh machine). The group's
    # own nice puts the whole build behind the tests.
    with contextlib.suppress(OSError):
        Path(f"/proc/{builder.pid}/autogroup").write_text("19")
    (OPS_CACHE / BUILDER_PID_FILE).write_text(f"{builder.pid}\n")
    return builder


#: The background builder's pid, beside the cache, for a test that comes to wait on it.
BUILDER_PID_FILE = ".background-builder.pid"


def _hurry_background_build() -> None:
    """A test waits for an op the background build holds: from now on that build is the test's own work, so
    its scheduling group gets a normal share of the CPU (with two xdist workers no core is idle, and at
    nice 19 the first op took minutes while a worker sat waiting)."""
    with contextlib.suppress(OSError, ValueError):
        pid = int((OPS_CACHE / BUILDER_PID_FILE).read_text().split()[0])
        if pid != os.getpid() and b"tests.cluster.pyenv" in Path(f"/proc/{pid}/cmdline").read_bytes():
            Path(f"/proc/{pid}/autogroup").write_text("0")
            tree = [pid]  # and each process's own nice, where the kernel schedules without autogroups
            for each in tree:
                with contextlib.suppress(OSError):
                    os.setpriority(os.PRIO_PROCESS, each, 0)
                tree += child_pids(each)


def stop_building(builder: subprocess.Popen[bytes]) -> None:
    """End a background build still running (its half-built op is rebuilt by the next one)."""
    if builder.poll() is None:
        # ninja starts each compiler in a process group of its own: stop the whole tree, then kill it.
        tree = [builder.pid]
        for pid in tree:
            signal_pids([pid], signal.SIGSTOP)
            tree += child_pids(pid)
        signal_pids(tree, signal.SIGKILL)
    builder.wait(timeout=30)


@contextmanager
def _locked(lock_path: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an flock on ``lock_path``; ``on_wait`` is called first when another process holds it."""
    with open(lock_path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def prebuilt_ops_key() -> str:
    """The name of the cache of DeepSpeed ops for the shared venv: what a build depends on.

    The versions of torch, DeepSpeed, Python, ninja and the compiler, and the venv's path: an op's
    build.ninja names the venv's include directories, and torch rebuilds an op whose build.ninja
    differs (a clone's own venv would otherwise rebuild the op in every process group).
    """
    venv = shared_venv()
    version = python_version(venv)
    shared_site = site_packages(venv, version)
    tools = []
    for argv in ([env_ninja(venv) or "ninja", "--version"], ["c++", "-dumpfullversion"]):
        try:
            tools.append(subprocess.run(argv, capture_output=True, text=True, check=False).stdout.strip())
        except OSError:
            tools.append("none")
    ninja_version, cxx_version = tools
    return (f"torch-{_dist_version(shared_site, 'torch')}-deepspeed-{_dist_version(shared_site, 'deepspeed')}"
            f"-py{version}-ninja{ninja_version}-gcc{cxx_version}-{hashlib.sha256(str(venv).encode()).hexdigest()[:8]}")


def _env_site_packages(node: Node, path: str) -> Path:
    env_site = site_packages(node.host_path(path), python_version(shared_venv()))
    if not env_site.is_dir():
        raise ClusterError(f"no Python env at {path} on {node.name}: call cluster.install_python_env()")
    return env_site


def plant_torch_version(node: Node, version: str, path: str = DEFAULT_ENV) -> None:
    """Shadow torch in the node's env with a hard-linked copy that reports ``version``.

    Files are hard links into the shared venv, so the changed ones are replaced (unlinked and
    written anew), never written in place.
    """
    venv = shared_venv()
    shared_site = site_packages(venv, python_version(venv))
    env_site = _env_site_packages(node, path)
    remove_planted_torch(node, path)
    shadow = env_site / "torch"
    done = subprocess.run(["cp", "-al", str(shared_site / "torch"), str(shadow)], capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:  # another filesystem: symlinked files keep the package importable
        shutil.rmtree(shadow, ignore_errors=True)
        subprocess.run(["cp", "-as", str(shared_site / "torch"), str(shadow)], check=True)
    version_py = shadow / "version.py"
    text = re.sub(r"^__version__ = .*$", f"__version__ = {version!r}", version_py.read_text(),
                  flags=re.MULTILINE)
    version_py.unlink()
    version_py.write_text(text)
    for cached in (shadow / "__pycache__").glob("version.*.pyc"):
        cached.unlink()
    for dist_info in shared_site.glob("torch-*.dist-info"):
        planted = env_site / f"torch-{version}.dist-info"
        shutil.copytree(dist_info, planted)
        metadata = planted / "METADATA"
        metadata.write_text(re.sub(r"^Version: .*$", f"Version: {version}", metadata.read_text(),
                                   count=1, flags=re.MULTILINE))
        break


def remove_planted_torch(node: Node, path: str = DEFAULT_ENV) -> None:
    """Undo plant_torch_version on this node."""
    env_site = _env_site_packages(node, path)
    shutil.rmtree(env_site / "torch", ignore_errors=True)
    for planted in env_site.glob("torch-*.dist-info"):
        shutil.rmtree(planted, ignore_errors=True)


def remove(node: Node, path: str = DEFAULT_ENV) -> None:
    """Delete the env on this node only (the interpreter path then no longer exists there)."""
    shutil.rmtree(node.host_path(path), ignore_errors=True)


if __name__ == "__main__":  # build_ops_in_background's process: python -m tests.cluster.pyenv BUILDER...
    prebuilt_ops(sys.argv[1:])
