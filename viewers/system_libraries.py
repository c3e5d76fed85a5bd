"""The system libraries the viewers' Qt loads, checked against viewers/debian-packages.txt with ldd.

usage: python viewers/system_libraries.py [--venv .venv-viewers]

PyQt5's wheel carries Qt but not the X11 libraries its `xcb` platform plugin links to; where one is
missing, Qt prints "Could not load the Qt platform plugin" and aborts. Two checks, one line each:

- every library of the Qt files silx loads (`QT_FILES`) is found on this machine (`ldd`), else the
  missing ones with the Debian package that holds each;
- every one (found or not) belongs to a package of debian-packages.txt, to one they depend on, or to
  Debian's required base: what a fresh Debian needs is on the list, not only what this machine has.

Exits 1 if either fails. `check_viewers.py` runs the first before starting silx.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE_LIST = HERE / "debian-packages.txt"
# What `silx view` loads of PyQt5, relative to site-packages/PyQt5: its modules, Qt's libraries, and
# the plugins Qt opens on an X display (platform, GL integration, input contexts, images, icons, themes).
QT_FILES = ("*.so", "Qt5/lib/*.so.5", "Qt5/plugins/platforms/libqxcb.so", "Qt5/plugins/xcbglintegrations/*.so",
            "Qt5/plugins/platforminputcontexts/*.so", "Qt5/plugins/imageformats/*.so",
            "Qt5/plugins/iconengines/*.so", "Qt5/plugins/platformthemes/*.so")
# What the wheel ships that silx never loads and that links to libraries no viewer needs: multimedia
# (PulseAudio, GStreamer) and the PDF image plugin (its libQt5Pdf is not in the wheel; Qt skips it).
NOT_LOADED = re.compile(r"Multimedia|^libqpdf\.so$")
LDD_LINE = re.compile(r"^\s*(\S+) => (not found|(\S+) \(0x[0-9a-f]+\))")


def listed_packages(path: Path = PACKAGE_LIST) -> list[str]:
    """The package names of debian-packages.txt (one a line, "#" starts a comment)."""
    names = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [name for name in names if name]


def qt_files(venv: Path) -> tuple[Path, ...]:
    """The PyQt5 files silx loads, in `venv`."""
    roots = sorted(venv.glob("lib/python3*/site-packages/PyQt5"))
    if not roots:
        raise FileNotFoundError(f"{venv}: no PyQt5 installed (run sh viewers/install.sh {venv})")
    files = {p for pattern in QT_FILES for p in roots[0].glob(pattern)}
    return tuple(sorted(p for p in files if not NOT_LOADED.search(p.name)))


@cache
def linked_libraries(files: tuple[Path, ...]) -> dict[str, str | None]:
    """soname -> the path ldd resolves it to (None: not found), over every file and what they load."""
    found: dict[str, str | None] = {}
    for path in files:
        out = subprocess.run(["ldd", str(path)], capture_output=True, text=True).stdout
        for line in out.splitlines():
            match = LDD_LINE.match(line)
            if match and found.get(match.group(1)) is None:
                found[match.group(1)] = match.group(3)
    return found


def debian_package_for(soname: str) -> str:
    """The package Debian's naming policy gives a shared library: libxcb-icccm.so.4 -> libxcb-icccm4."""
    base, _, version = soname.partition(".so.")
    base = base.lower()
    major = version.split(".")[0]
    return f"{base}-{major}" if base[-1:].isdigit() else f"{base}{major}"


def owners(paths: list[str]) -> dict[str, str]:
    """path -> the installed Debian package holding it (merged /usr: either spelling); unowned paths left out."""
    spellings: dict[str, str] = {}
    for path in paths:
        for spelling in {path, str(Path(path).resolve())}:
            spellings[spelling] = path
            if spelling.startswith("/usr/lib/"):
                spellings[spelling.removeprefix("/usr")] = path
            elif spelling.startswith("/lib/"):
                spellings["/usr" + spelling] = path
    out = subprocess.run(["dpkg", "-S", *spellings], capture_output=True, text=True).stdout
    found = {}
    for line in out.splitlines():
        package, _, spelling = line.partition(": ")
        if spelling in spellings:
            found[spellings[spelling]] = package.split(":")[0]
    return found


DEPENDENCY = re.compile(r"^\s*(\|?)(Depends|PreDepends): (\S+)")


@cache
def package_closure(packages: tuple[str, ...]) -> frozenset[str]:
    """`packages` and what they surely bring (Depends, Pre-Depends), by apt's metadata. A group of
    alternatives (a | b) or a virtual package is not followed: apt may choose another than the one a
    library is in, so such a library has to be listed itself."""
    closure, todo = set(packages), set(packages)
    while todo:
        out = subprocess.run(["apt-cache", "depends", "--no-recommends", "--no-suggests", "--no-conflicts",
                              "--no-breaks", "--no-replaces", "--no-enhances", *sorted(todo)],
                             capture_output=True, text=True).stdout
        todo = set()
        in_group = False
        for line in out.splitlines():
            match = DEPENDENCY.match(line)
            if not match:
                in_group = False  # a package heading, or a line of a virtual package's providers
                continue
            alternative, _, name = match.groups()
            if not (alternative or in_group or name.startswith("<")):
                name = name.split(":")[0]
                if name not in closure:
                    closure.add(name)
                    todo.add(name)
            in_group = bool(alternative)
    return frozenset(closure)


def required_packages() -> frozenset[str]:
    """Debian's required base (installed on every Debian, debootstrap's minbase included)."""
    out = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${Priority} ${Essential}\n"],
                         capture_output=True, text=True).stdout
    return frozenset(line.split()[0] for line in out.splitlines()
                     if line.split()[1:2] == ["required"] or line.endswith(" yes"))


def missing_problem(venv: Path) -> str | None:
    """One line naming the system libraries Qt cannot find (with their Debian packages), or None."""
    missing = sorted(name for name, path in linked_libraries(qt_files(venv)).items() if path is None)
    if not missing:
        return None
    named = ", ".join(f"{name} (Debian package {debian_package_for(name)})" for name in missing)
    return f"Qt's xcb platform plugin cannot load: {named} not found; sh viewers/install.sh installs them"


def unlisted_problem(venv: Path) -> str | None:
    """One line naming the packages Qt's libraries come from that debian-packages.txt does not bring, or None."""
    covered = package_closure(tuple(listed_packages())) | required_packages()
    system = {name: path for name, path in linked_libraries(qt_files(venv)).items()
              if path is None or "/site-packages/" not in path}
    packages = owners(sorted(path for path in system.values() if path))
    unlisted: dict[str, list[str]] = {}
    for name, path in sorted(system.items()):
        # a missing library's package by Debian's naming policy; a found one's as dpkg knows it
        package = packages.get(path) if path else debian_package_for(name)
        if package is None or package not in covered:
            unlisted.setdefault(package or f"no package ({path})", []).append(name)
    if not unlisted:
        return None
    named = "; ".join(f"{package}: {', '.join(names)}" for package, names in unlisted.items())
    return f"{PACKAGE_LIST.name} does not bring what Qt loads from {named}"


def report(venv: Path) -> tuple[list[str], int]:
    """A PASS or FAIL line for each check, and how many failed."""
    lines, failures = [], 0
    for check, problem in (("found", missing_problem(venv)), ("listed", unlisted_problem(venv))):
        if problem:
            failures += 1
            lines.append(f"FAIL qt libraries {check}: {problem}")
        else:
            count = sum(path is not None for path in linked_libraries(qt_files(venv)).values())
            lines.append(f"PASS qt libraries {check}: {count} libraries of {len(qt_files(venv))} Qt files")
    return lines, failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--venv", type=Path, default=HERE.parent / ".venv-viewers")
    lines, failures = report(parser.parse_args().venv)
    print("\n".join(lines))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
