"""Write docs/cli.md, the reference of every command and option, from the click help of `cli.py`.

    .venv/bin/python docs/make_cli_md.py          # rewrite docs/cli.md
    .venv/bin/python docs/make_cli_md.py --check  # exit 1 if docs/cli.md is not what it would write

The help is rendered at a fixed width, so the page depends on the code only; tests/test_cli_docs.py
fails when the page is stale.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cli  # noqa: E402

PAGE = ROOT / "docs" / "cli.md"
WIDTH = 100
GROUPS = ("hedprep", "segnet")


def context(command: click.Command, name: str, parent: click.Context | None = None) -> click.Context:
    """The context `--help` runs in, on a terminal of WIDTH columns."""
    settings = {**command.context_settings, "terminal_width": WIDTH, "max_content_width": WIDTH}
    return click.Context(command, info_name=name, parent=parent, **settings)


def render() -> str:
    """The Markdown page: each group's help, then each of its commands' help, in definition order."""
    lines = [
        "# Command reference",
        "",
        "Every command and option of `hedprep` and `segnet`, as `--help` prints them. Generated from",
        "`cli.py` by `docs/make_cli_md.py`; do not edit by hand (`tests/test_cli_docs.py` fails when this",
        "page is stale: rerun `.venv/bin/python docs/make_cli_md.py`).",
        "",
    ]
    for name in GROUPS:
        group: click.Group = getattr(cli, name)
        ctx = context(group, name)
        commands = list(group.commands)
        lines += [f"## `{name}`", "", "```text", group.get_help(ctx), "```", ""]
        lines += [", ".join(f"[`{name} {c}`](#{name}-{c})" for c in commands), ""]
        for command_name in commands:
            command = group.commands[command_name]
            lines += [f"### {name} {command_name}", "", "```text",
                      command.get_help(context(command, command_name, ctx)), "```", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/cli.md is stale; write nothing")
    args = parser.parse_args()
    page = render()
    if args.check:
        if not PAGE.is_file() or PAGE.read_text(encoding="utf-8") != page:
            sys.exit(f"{PAGE}: stale; rerun python docs/make_cli_md.py")
        return
    PAGE.write_text(page, encoding="utf-8")
    print(f"wrote {PAGE}")


if __name__ == "__main__":
    main()
