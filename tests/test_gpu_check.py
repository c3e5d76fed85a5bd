"""benchmarks/gpu_check.py (`make gpu-check`) where no GPU is: its arguments, fixture, weights note and report."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_check)


def test_arguments_and_their_defaults(tmp_path, capsys):
    args = gpu_check.parse_args(["--out", str(tmp_path)])
    assert (args.size, args.device, args.budget_s, args.weights) == ((1024, 2048), "cuda", 480.0, "bsds500")
    assert args.sections == list(gpu_check.SECTIONS) and args.stages == gpu_check.DEFAULT_STAGES
    with pytest.raises(SystemExit) as stop:
        gpu_check.parse_args(["--out", str(tmp_path), "--size", "12x2048"])
    assert stop.value.code == 2 and "at least 16x16" in capsys.readouterr().err


def test_without_a_gpu_it_says_so_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(gpu_check.torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path), "--work", str(tmp_path / "work")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no CUDA GPU here" in err[0] and not (tmp_path / "gpu-check.json").exists()


def test_the_fixture_has_the_frames_asked_for(tmp_path):
    root = gpu_check.make_dataset(tmp_path, 4, (32, 64))
    assert len(list((root / "leftImg8bit" / "train").rglob("*.png"))) == 4
    assert len(list((root / "leftImg8bit" / "val").rglob("*.png"))) == 2
    frames = gpu_check.first_frames(root, 3)
    assert frames.shape == (3, 32, 64, 3) and frames.dtype == np.uint8


def test_a_float16_weights_file_is_recognised(tmp_path):
    from hedprep.hed.weights import bundled_weights_path

    source, half = bundled_weights_path(), tmp_path / "hed_fp16.weights.h5"
    with h5py.File(source, "r") as f, h5py.File(half, "w") as g:
        f.visititems(lambda name, obj: g.create_dataset(name, data=obj[()].astype(np.float16))
                     if isinstance(obj, h5py.Dataset) else None)
    assert gpu_check.weights_precision(str(source)) == "float32"
    assert gpu_check.weights_precision(str(half)) == "float16"
    assert gpu_check.weights_precision("bsds500") == "float32"


def test_the_report_is_json_and_markdown(tmp_path):
    report = {"command": "gpu_check.py --out X", "machine": {"gpu": "H200", "torch": "2.9"},
              "weights_note": "float16 weights",
              "sections": {"hed": [{"precision": "fp32", "batch": 1, "frames_per_s": 123.456789},
                                   {"precision": "bf16", "batch": 4, "skipped": "time budget"}],
                           "torchrun": {"equal": True, "model_tensors": 300}}}
    json_path, md_path = gpu_check.write_report(report, tmp_path / "out")
    assert json.loads(json_path.read_text()) == report
    page = md_path.read_text()
    assert "machine: gpu H200, torch 2.9" in page and "float16 weights" in page
    assert "| precision | batch | frames_per_s | skipped |" in page and "| fp32 | 1 | 123.5 |  |" in page
    assert "## torchrun" in page and "| True | 300 |" in page
    assert not list((tmp_path / "out").glob(".*.tmp"))
