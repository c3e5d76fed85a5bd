"""The import rules docs/architecture.md states, checked on the source: data flows one way."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("hedprep", "segnet", "pipelines")


def imports() -> dict[str, set[str]]:
    """Module name -> the modules it imports (absolute names), for every module of the packages."""
    found: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            names = set()
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names.add(node.module)
                elif isinstance(node, ast.Import):
                    names.update(alias.name for alias in node.names)
            found[module] = names
    return found


def test_hedprep_imports_neither_segnet_nor_pipelines_nor_the_cli():
    for module, names in imports().items():
        if module.startswith("hedprep"):
            bad = {n for n in names if n.split(".")[0] in ("segnet", "pipelines", "cli")}
            assert not bad, (module, bad)


# The faces of hedprep that segnet may use: shards, HED (edges for `segnet predict`), and the pieces
# both packages share (device names, atomic writes, the one-line error base, option parsers).
SEGNET_MAY_USE = {"hedprep.shards", "hedprep.hed", "hedprep.devices", "hedprep.atomic", "hedprep.errors",
                  "hedprep.options"}


def test_segnet_uses_only_the_faces_of_hedprep_it_may():
    for module, names in imports().items():
        if module.startswith("segnet"):
            used = {n for n in names if n.split(".")[0] == "hedprep"}
            assert used <= SEGNET_MAY_USE, (module, used)
            assert not {n for n in names if n.split(".")[0] in ("pipelines", "cli")}, module


def test_nothing_imports_the_cli():
    for module, names in imports().items():
        assert "cli" not in {n.split(".")[0] for n in names}, module


def test_hedprep_shards_has_no_import_cycle():
    graph = {m: {n for n in names if n.startswith("hedprep.shards.")} for m, names in imports().items()
             if m.startswith("hedprep.shards.")}
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, " -> ".join((*path, module))
        if module in done:
            return
        for name in graph.get(module, ()):
            visit(name, (*path, module))
        done.add(module)

    for module in graph:
        visit(module, ())


def test_segnet_devices_does_not_load_the_hed_network():
    """Choosing a device for training is no reason to import HED's network (nor its weights)."""
    code = "import sys, segnet.devices; print(sorted(m for m in sys.modules if m.startswith('hedprep.hed')))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "hedprep.hed.network" not in result.stdout and result.stdout.strip() == "[]", result.stdout


def test_both_packages_errors_share_one_base():
    """The CLI and the pipelines catch `HedsegError` alone; each error keeps its path and exit status."""
    from hedprep.errors import HedprepError, HedsegError, OptionError
    from segnet.errors import SegnetError, SegnetOptionError

    for kind, status in ((HedprepError, 1), (OptionError, 2), (SegnetError, 1), (SegnetOptionError, 2)):
        error = kind("x.h5: broken", "x.h5")
        assert isinstance(error, HedsegError)
        assert (str(error), error.path, error.exit_code) == ("x.h5: broken", "x.h5", status)
    assert not issubclass(SegnetError, HedprepError) and not issubclass(HedprepError, SegnetError)
