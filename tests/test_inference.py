"""segnet.inference: a checkpoint's model, built without a random initialisation, predicts as the model saved."""

from __future__ import annotations

import torch

from segnet.checkpoint import save_checkpoint
from segnet.deeplab import build_model
from segnet.inference import load_model


def test_a_loaded_model_is_the_saved_one_with_nothing_left_on_meta(tmp_path):
    torch.manual_seed(3)
    saved = build_model("dlse-hed").eval()
    path = tmp_path / "best.pt"
    save_checkpoint(path, {"variant": "dlse-hed", "model_args": saved.model_args, "model": saved.state_dict(),
                           "config": {}})
    loaded, _ = load_model(path, torch.device("cpu"))
    tensors = list(loaded.parameters()) + list(loaded.buffers())
    assert tensors and not any(t.is_meta for t in tensors)
    assert not loaded.training
    images = torch.randn(1, 4, 32, 64)
    with torch.inference_mode():
        assert torch.equal(loaded(images), saved(images))
