"""The documentation is true to the code: its links resolve, and every command line it shows names a
command, options and Makefile targets that exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import cli

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
SHELL = ("bash", "sh", "console", "shell")
GROUPS = {"hedprep": cli.hedprep, "segnet": cli.segnet}


def page_id(path: Path) -> str:
    return str(path.relative_to(REPO))


def command_lines(text: str) -> list[str]:
    """The lines of the page's bash/sh/console blocks, continuation lines joined, comments dropped."""
    lines, language, block = [], None, []
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("```"):
            if language is None:
                language, block = stripped[3:].strip(), []
                continue
            if language in SHELL:
                for line in "\n".join(block).replace("\\\n", " ").splitlines():
                    line = line.split(" #")[0].strip()
                    if line and not line.startswith("#"):
                        lines.append(line)
            language = None
        elif language is not None:
            block.append(raw)
    return lines


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_links_resolve(page):
    text = page.read_text(encoding="utf-8")
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # web addresses, anchors
        assert (page.parent / target.split("#")[0]).exists(), f"{page_id(page)}: broken link {target}"


def command_problems(line: str, makefile: str) -> tuple[bool, list[str]]:
    """Whether `line` runs hedprep, segnet or make, and what in it does not exist."""
    words = line.split()
    for start, word in enumerate(words):
        name = word.split("/")[-1]
        if name in GROUPS and start + 1 < len(words) and not words[start + 1].startswith("-"):
            command = GROUPS[name].commands.get(words[start + 1])
            if command is None:
                return True, [f"no command `{name} {words[start + 1]}`"]
            known = {opt for param in command.params
                     for opt in (*getattr(param, "opts", []), *getattr(param, "secondary_opts", []))} | {"--help", "-h"}
            used = re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", " ".join(words[start + 2:]))
            return True, [f"`{name} {words[start + 1]}` has no {opt}" for opt in used if opt not in known]
        if word == "make" and start + 1 < len(words) and re.fullmatch(r"[a-z][a-z-]*", words[start + 1]):
            target = words[start + 1]
            return True, [] if re.search(rf"^{target}:", makefile, re.M) else [f"no make target {target}"]
    return False, []


def test_the_checker_flags_what_does_not_exist():
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert command_problems("segnet study --root x --variants dlse", makefile) == (True, [])
    assert command_problems("segnet study --rooot x", makefile) == (True, ["`segnet study` has no --rooot"])
    assert command_problems(".venv/bin/hedprep bild x", makefile) == (True, ["no command `hedprep bild`"])
    assert command_problems("make demo", makefile) == (True, [])
    assert command_problems("make demos", makefile) == (True, ["no make target demos"])
    assert command_problems("export CITYSCAPES_DATASET=/data", makefile) == (False, [])


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_command_lines_use_real_commands_and_options(page):
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    for line in command_lines(page.read_text(encoding="utf-8")):
        _, problems = command_problems(line, makefile)
        assert not problems, f"{page_id(page)}: {'; '.join(problems)}: {line}"


def test_the_pages_show_commands():
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    lines = [line for page in PAGES for line in command_lines(page.read_text(encoding="utf-8"))]
    checked = [line for line in lines if command_problems(line, makefile)[0]]
    assert len(checked) > 30 and sum(" study " in line for line in checked) >= 3
