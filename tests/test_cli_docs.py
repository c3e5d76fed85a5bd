"""docs/cli.md is the click help of every command as `cli.py` renders it now (docs/make_cli_md.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cli

DOCS = Path(__file__).resolve().parents[1] / "docs"


def load_generator():
    spec = importlib.util.spec_from_file_location("make_cli_md", DOCS / "make_cli_md.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_md_is_current():
    page = load_generator().render()
    assert (DOCS / "cli.md").read_text(encoding="utf-8") == page, (
        "docs/cli.md is stale: rerun .venv/bin/python docs/make_cli_md.py"
    )


def test_cli_md_holds_every_command_and_option():
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    for group in (cli.hedprep, cli.segnet):
        for name, command in group.commands.items():
            assert f"### {group.name} {name}\n" in text
            for param in command.params:
                for option in getattr(param, "opts", []):
                    if option.startswith("-"):
                        assert option in text, (group.name, name, option)
