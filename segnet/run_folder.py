"""A training run's folder, its one owner: the files' names, and what they say.

    RUN/config.json                 the run's TrainConfig, as resolved when it started
    RUN/config.toml                 the same as `segnet train --config` takes it
    RUN/log.txt                     what the run reported, a line each
    RUN/metrics.jsonl, metrics.csv  one row per finished epoch (`METRIC_FIELDS`)
    RUN/last.pt                     the checkpoint after the last epoch (or where Ctrl-C stopped it)
    RUN/best.pt                     the checkpoint of the best validation mIoU (a hard link of a last.pt)
    RUN/val.json                    `segnet study`'s evaluation of best.pt on val
    RUN/events.out.tfevents.*       TensorBoard's event files, one per start or resume (`segnet.tensorboard_log`)

Only rank 0 of a torchrun job writes (`writer=False` elsewhere); every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

from hedprep.atomic import write_text_atomic
from segnet.checkpoint import link_checkpoint, load_checkpoint
from segnet.config import TrainConfig
from segnet.config_file import config_file_text
from segnet.errors import SegnetError
from segnet.tensorboard_log import TensorBoardLog, open_tensorboard

METRIC_FIELDS = ("stage", "epoch", "step", "loss", "val_miou", "images_per_s", "lr", "seconds")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl ([] when there is none)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class RunFolder:
    """The files of one run."""

    def __init__(self, path: str | os.PathLike, writer: bool = True) -> None:
        self.path = Path(path)
        self.writer = writer
        self.last = self.path / "last.pt"
        self.best = self.path / "best.pt"
        self.config = self.path / "config.json"
        self.config_toml = self.path / "config.toml"
        self.metrics_jsonl = self.path / "metrics.jsonl"
        self.metrics_csv = self.path / "metrics.csv"
        self.log_file = self.path / "log.txt"
        self.evaluation = self.path / "val.json"
        self.restarted = False  # --resume found no checkpoint yet: the run starts over

    # ------------------------------------------------------------------------------------ reading

    def started(self) -> bool:
        """A run was started here (it wrote its config or a checkpoint)."""
        return self.last.is_file() or self.config.is_file()

    def finished(self, config: TrainConfig, ignore: tuple[str, ...] = ()) -> bool:
        """True if last.pt is past the last epoch of `config`'s stages (the coarse one and the schedule).

        Raises:
            SegnetError: the run here used other options than `config` (besides `ignore`).
        """
        if not self.last.is_file():
            return False
        checkpoint = load_checkpoint(self.last)
        what = config.changes_from(TrainConfig.from_json(checkpoint["config"]), ignore=ignore)
        if checkpoint["variant"] != config.variant or what:
            raise SegnetError(f"{self.path}: a run with other options ({what or 'variant'}); rerun the study with "
                              "them, or choose another --out", self.path)
        return checkpoint["next"]["stage"] >= len(config.stages)

    def metrics(self) -> list[dict[str, Any]]:
        """The metrics rows of the finished epochs, in order."""
        return read_metrics(self.metrics_jsonl)

    # ------------------------------------------------------------------------------------ writing

    def prepare(self, config: TrainConfig, resume: bool) -> dict[str, Any] | None:
        """Check the folder for a new run or a resume; returns the checkpoint to resume from (None: start
        from the first epoch)."""
        if resume:
            if not self.last.is_file():
                return self._restart(config)
            checkpoint = load_checkpoint(self.last)
            if checkpoint["variant"] != config.variant:
                raise SegnetError(
                    f"{self.last}: a {checkpoint['variant']} run; --resume needs --variant {checkpoint['variant']}",
                    self.last,
                )
            what = config.changes_from(TrainConfig.from_json(checkpoint["config"]))
            if what:
                raise SegnetError(f"{self.last}: the run used other options ({what}); resume with the same ones",
                                  self.last)
            self._relink_best(checkpoint)
            return checkpoint
        if not self.writer:  # rank 0 decides, and may have written config.json already
            return None
        if self.path.exists() and (self.config.exists() or self.last.exists()):
            raise SegnetError(
                f"{self.path}: holds another run; add --resume to continue it, or choose another --out", self.path
            )
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / f".write-test-{os.getpid()}"
            probe.touch()
            probe.unlink()
        except OSError as error:
            raise SegnetError(f"{self.path}: run folder is not writable ({error.strerror or error})",
                              self.path) from None
        write_text_atomic(self.config, json.dumps(config.to_json(), indent=1) + "\n")
        header = (f"The options of the run in {self.path}, as resolved when it started.\n"
                  "`segnet train --config config.toml` runs it again (with --out elsewhere); --resume continues it.")
        write_text_atomic(self.config_toml, config_file_text(config.to_options(), header))
        return None

    def _relink_best(self, checkpoint: dict[str, Any]) -> None:
        """A run killed between writing an improving epoch's last.pt and linking best.pt to it: that last.pt
        is the best checkpoint (saved at an epoch's end, with the best mIoU as its own), so link it now."""
        best = checkpoint.get("best_miou")
        at_epoch_end = checkpoint.get("epoch_stats") is None
        if (self.writer and best is not None and at_epoch_end and not self.best.exists()
                and (checkpoint.get("metrics") or {}).get("val_miou") == best):
            link_checkpoint(self.last, self.best)

    def _restart(self, config: TrainConfig) -> None:
        """--resume on a run stopped before its first checkpoint (config.json, no last.pt): start it over,
        if it was started with the same options."""
        if not self.config.is_file():
            raise SegnetError(f"{self.last}: nothing to resume (no last.pt in {self.path})", self.last)
        try:
            earlier = TrainConfig.from_json(json.loads(self.config.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise SegnetError(f"{self.config}: not a run's config.json ({error}); choose another --out",
                              self.config) from None
        what = config.changes_from(earlier)
        if what:
            raise SegnetError(f"{self.config}: the run used other options ({what}); resume with the same ones",
                              self.config)
        self.restarted = True
        if self.writer and self.metrics_jsonl.exists():
            self._write_metrics([])  # rows of epochs no checkpoint kept

    def tensorboard(self, first_step: int) -> TensorBoardLog | None:
        """TensorBoard's event log of this run from optimizer step `first_step` on (the events earlier
        starts logged from it are hidden); None where this process does not write or tensorboard is not
        installed."""
        return open_tensorboard(self.path, first_step) if self.writer else None

    def log(self, line: str) -> None:
        """Append a line to log.txt."""
        if self.writer:
            with open(self.log_file, "a", encoding="utf-8") as f:
                f.write(line + "\n")

    def keep_metrics_until(self, stage: int, epoch: int) -> None:
        """Drop metric rows written after the checkpoint being resumed (a run killed in between)."""
        if not self.writer or not self.metrics_jsonl.exists():
            return
        kept = [r for r in self.metrics() if (r["stage"] - 1, r["epoch"] - 1) <= (stage, epoch)]  # rows count from 1
        self._write_metrics(kept)

    def add_metrics(self, row: dict[str, Any]) -> None:
        """Append a finished epoch's row to metrics.jsonl and metrics.csv."""
        if self.writer:
            self._write_metrics(self.metrics() + [row])

    def _write_metrics(self, rows: list[dict[str, Any]]) -> None:
        write_text_atomic(self.metrics_jsonl, "".join(json.dumps(r) + "\n" for r in rows))
        table = io.StringIO()
        writer = csv.DictWriter(table, fieldnames=METRIC_FIELDS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomic(self.metrics_csv, table.getvalue())
