"""Shared fixtures and helpers: the pretrained HED (loaded once), golden photographs, and two ways of
running the command line: `invoke` in this process (fast; most tests) and `run` as a real subprocess
(for what needs one: signals, resource limits, clusters, the installed console scripts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

# Writes skip their fsyncs (hedprep.atomic): they stay whole and atomic, and a tiny training run spent half
# its time fsyncing checkpoints. Subprocesses inherit it; tests/test_atomic.py checks the fsyncs themselves.
os.environ.setdefault("HEDSEG_NO_FSYNC", "1")

GOLDEN = Path(__file__).parent / "golden"
GOLDEN_NAMES = tuple(json.loads((GOLDEN / "golden.json").read_text())["maps"])
BIN = Path(sys.executable).parent


@pytest.fixture(scope="session", autouse=True)
def environment_as_os_environ_says():
    """GNU readline, which pytest imports, exports COLUMNS=80 and LINES to the C environment behind
    os.environ's back; subprocesses started without `env=` inherit them and fold their output at 80
    columns (a long tmp_path then breaks a file name in two). Make the C environment agree again."""
    for name in ("COLUMNS", "LINES"):
        if name not in os.environ:
            os.unsetenv(name)


@pytest.fixture(scope="session")
def hed_model():
    from hedprep.hed import load_hed

    return load_hed()


def golden_photo(name: str) -> np.ndarray:
    from hedprep.images import read_rgb

    return read_rgb(GOLDEN / f"{name}.png")


def golden_edges(name: str) -> np.ndarray:
    return np.load(GOLDEN / f"{name}.hed.npy")


@dataclass
class CliResult:
    """What a command returned and printed, whichever way it ran."""

    returncode: int
    stdout: str
    stderr: str


def invoke(*args: str) -> CliResult:
    """Run `hedprep ...` or `segnet ...` in this process, through click's test runner."""
    from click.testing import CliRunner

    import cli

    group = getattr(cli, args[0])
    result = CliRunner().invoke(group, list(args[1:]), prog_name=args[0], catch_exceptions=False)
    return CliResult(result.exit_code, result.stdout, result.stderr)


def run(*args: str, cwd: Path | None = None, timeout: float = 600, columns: str | None = "200"
        ) -> subprocess.CompletedProcess:
    """Run an installed console script (`hedprep`, `segnet`) as a subprocess, output piped.

    `columns`: the COLUMNS variable it sees (None: unset, as when a user pipes into a file).
    """
    exe = BIN / args[0]
    if exe.exists():
        command = [str(exe), *args[1:]]
    else:  # not installed as console scripts: run the click groups directly
        command = [sys.executable, "-c", f"import cli; cli.{args[0]}()", *args[1:]]
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    if columns is not None:
        env["COLUMNS"] = columns
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


def assert_one_line_error(result, *fragments: str, status: int = 1) -> None:
    """The command failed with `status`, printed exactly one `error:` line holding every fragment, and
    no traceback."""
    assert result.returncode == status, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in error_lines[0], error_lines[0]


@pytest.fixture(scope="session")
def segnet_shards(tmp_path_factory) -> Path:
    """Shards of a tiny fixture (8 train, 4 val, 2 test frames of 64x128, and 3 train_extra frames with
    gtCoarse labels), built by hedprep's build."""
    from hedprep.build_plan import BuildConfig
    from hedprep.fixture import make_fixture
    from pipelines.build import build_split

    base = tmp_path_factory.mktemp("segnet-data")
    make_fixture(base / "cityscapes", {"train": 8, "val": 4, "test": 2, "train_extra": 3}, size=(64, 128), seed=11)
    for split, labels in (("train", "fine"), ("val", "fine"), ("test", "fine"), ("train_extra", "coarse")):
        build_split(BuildConfig(root=str(base / "cityscapes"), split=split, out=str(base / "shards"),
                                frames_per_shard=3, device="cpu", labels=labels))
    return base / "shards"


def official_scores(predictions: list[Path], ground_truths: list[Path]) -> dict:
    """cityscapesscripts' evaluation of labelIds files, quiet, writing nothing, pixel-level only (the
    instance-weighted scores need instanceIds files and are not segnet's figures)."""
    import copy

    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official

    args = copy.copy(official.args)  # its module-level defaults, left untouched for other callers
    args.quiet = True
    args.JSONOutput = False
    args.evalInstLevelScore = False
    args.evalPixelAccuracy = False
    return official.evaluateImgLists([str(p) for p in predictions], [str(p) for p in ground_truths], args)


def default_sigint() -> None:
    """Popen preexec_fn for processes a test interrupts: a shell's background job (`cmd &`, as CI may run
    the suite) starts with SIGINT ignored, and a child would inherit that and never see Ctrl-C."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
