"""Prove that .whl/ plus the device image satisfy clusterkit's dependencies, and print what is carried.

Walks Requires-Dist from pyproject.toml's dependencies (markers evaluated for CPython 3.12 on Linux
x86_64, extras followed) through the carried wheels and sdists. A requirement is met by a carried
distribution whose version fits, or by a package the image has (scripts/gpu/image-packages.txt; its
version is unknown there, so that is assumed). Exit 1 on anything missing, a wrong or duplicate
version, or a pin of scripts/gpu/wheels.txt that is not in .whl/.

Usage: check_closure.py [WHEEL_DIR]      (default .whl; run from the repository root)
"""

from __future__ import annotations

import email.parser
import importlib.metadata
import re
import sys
import tarfile
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

HERE = Path(__file__).resolve().parent
#: The device's python3 (KINDS.md: Python 3.12.3 at /opt/torch/.venv/bin/python3).
DEVICE_MARKERS = {
    "python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython",
    "implementation_version": "3.12.3", "platform_python_implementation": "CPython", "os_name": "posix",
    "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
    "platform_release": "", "platform_version": "",
}
_WHEEL_NAME = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)(-\d[^-]*)?-[^-]+-[^-]+-[^-]+\.whl$")
_SDIST_NAME = re.compile(r"^(?P<name>.+)-(?P<version>\d[^-]*)\.tar\.gz$")


@dataclass
class Carried:
    """One distribution file in the wheel directory."""

    name: str
    version: Version
    path: Path
    requires: list[Requirement] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return "wheel" if self.path.suffix == ".whl" else "sdist"


def read_metadata(path: Path) -> str:
    """The METADATA of a wheel, or the top-level PKG-INFO of an sdist."""
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as archive:
            member = next(n for n in archive.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA"))
            return archive.read(member).decode("utf-8")
    with tarfile.open(path) as archive:
        info = next(m for m in archive.getmembers() if m.name.count("/") == 1 and m.name.endswith("/PKG-INFO"))
        handle = archive.extractfile(info)
        assert handle is not None
        return handle.read().decode("utf-8")


def scan(directory: Path) -> tuple[dict[str, Carried], list[str]]:
    """Carried distributions by canonical name, and the problems found (duplicates, odd files)."""
    carried: dict[str, Carried] = {}
    problems: list[str] = []
    for path in sorted(directory.iterdir()):
        match = _WHEEL_NAME.match(path.name) or _SDIST_NAME.match(path.name)
        if not match:
            problems.append(f"{path.name}: not a wheel or sdist")
            continue
        name = canonicalize_name(match["name"])
        if name in carried:
            problems.append(f"two versions of {name}: {carried[name].path.name} and {path.name} (pip stops)")
            continue
        metadata = email.parser.Parser().parsestr(read_metadata(path))
        requires = [Requirement(text) for text in metadata.get_all("Requires-Dist") or []]
        carried[name] = Carried(name, Version(match["version"]), path, requires)
    return carried, problems


def read_pins(path: Path) -> dict[str, str]:
    """wheels.txt: ``name==version`` per line (``sdist`` after it allowed), ``#`` comments."""
    pins: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        spec = line.split("#", 1)[0].split()
        if spec:
            name, _, version = spec[0].partition("==")
            pins[canonicalize_name(name)] = version
    return pins


def read_image_packages(path: Path) -> set[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return {canonicalize_name(line.strip()) for line in lines if line.strip() and not line.startswith("#")}


def applies(requirement: Requirement, extras: set[str]) -> bool:
    """Whether a Requires-Dist line counts on the device for a dependent asking for ``extras``."""
    if requirement.marker is None:
        return True
    marker: Marker = requirement.marker
    return any(marker.evaluate({**DEVICE_MARKERS, "extra": extra}) for extra in {"", *extras})


def walk(roots: list[Requirement], carried: dict[str, Carried], image: set[str]) -> tuple[set[str], list[str]]:
    """Follow requirements from ``roots``; returns the carried names reached and the unmet needs."""
    reached: set[str] = set()
    problems: list[str] = []
    seen: set[tuple[str, frozenset[str]]] = set()
    queue = [(requirement, "pyproject.toml", frozenset[str]()) for requirement in roots]
    while queue:
        requirement, needed_by, parent_extras = queue.pop()
        if not applies(requirement, set(parent_extras)):
            continue
        name = canonicalize_name(requirement.name)
        extras = frozenset(requirement.extras)
        if name in carried:
            dist = carried[name]
            if not requirement.specifier.contains(dist.version, prereleases=True):
                problems.append(f"{needed_by} needs {requirement}, carried {dist.version}")
            reached.add(name)
            if (name, extras) not in seen:
                seen.add((name, extras))
                queue += [(sub, f"{name} {dist.version}", extras) for sub in dist.requires]
        elif name not in image:
            problems.append(f"{needed_by} needs {requirement}: neither carried nor in the image")
    return reached, problems


def venv_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def main(argv: list[str]) -> int:
    directory = Path(argv[1] if len(argv) > 1 else ".whl")
    if not directory.is_dir():
        print(f"check_closure: {directory} does not exist; run scripts/gpu/fetch-wheels", file=sys.stderr)
        return 1
    carried, problems = scan(directory)
    pins = read_pins(HERE / "wheels.txt")
    for name, version in pins.items():
        if name not in carried:
            problems.append(f"{name}=={version} is pinned in wheels.txt but not in {directory}/")
        elif str(carried[name].version) != version:
            problems.append(f"{name}: wheels.txt pins {version}, {directory}/ has {carried[name].version}")
    project = tomllib.loads(Path("pyproject.toml").read_text(encoding="utf-8"))["project"]
    roots = [Requirement(text) for text in project["dependencies"]]
    reached, unmet = walk(roots, carried, read_image_packages(HERE / "image-packages.txt"))
    problems += unmet
    total = 0
    print(f"carried in {directory}/ (CPython 3.12, manylinux x86_64):")
    for name in sorted(carried):
        dist = carried[name]
        size = dist.path.stat().st_size
        total += size
        notes = [] if name in reached else ["not needed by clusterkit"]
        if name not in pins:
            notes.append("not in wheels.txt")
        here = venv_version(name)
        if here is not None and here != str(dist.version):
            notes.append(f"this interpreter has {here}")
        print(f"  {dist.path.name:<80} {size / 1024:8.0f} KiB  {'; '.join(notes)}")
    print(f"total: {len(carried)} files, {total / 2**20:.1f} MiB")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    print("closure: OK" if not problems else f"closure: {len(problems)} problem(s)")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
