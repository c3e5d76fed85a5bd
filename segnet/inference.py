"""One way to predict: a checkpoint's model, and the trainIds it gives a batch of frames.

`segnet evaluate`, `segnet predict` and the study's qualitative sheet all predict through
`Segmenter.predict`, so a frame gets the same trainIds whichever of them reads it:

    uint8 (N, C, h, w) frames at the input size -> the device -> normalise (ImageNet mean/std, edge / 255)
    -> channels-last where training uses it (CUDA) -> the model, in inference mode, under bfloat16
    autocast if asked -> float32 logits upsampled (bilinear, half-pixel centres) to the output size
    -> argmax -> uint8 trainIds on the device

Frames reach the input size as the shards give them (`frame_at_size`, `SplitReader.read`): from the
smallest resolution level at least that large, resized the rest of the way by area averaging. So a val
frame's PNG given to `segnet predict` gets the trainIds `segnet evaluate --save-predictions` writes for
it, pixel for pixel, when the shards were built with the default levels (tested: vanilla and dlse-hed,
whose edges predict computes with the build's HED, fp32 and uint8 rounding).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from hedprep.shards import DEFAULT_LEVELS, choose_level, downsample_frame, max_levels, resize_frame
from segnet.backends import autocast, use_channels_last
from segnet.checkpoint import load_checkpoint
from segnet.config import TrainConfig
from segnet.data import model_input
from segnet.deeplab import TrainingNetwork, build_model
from segnet.devices import amp_dtype
from segnet.errors import SegnetError


@dataclass(frozen=True)
class Segmenter:
    """A model ready to predict: in eval mode on `device`, in the memory layout it runs in.

    `amp`: the autocast dtype (bfloat16) or None; `input_size`: the size it was trained at last, or None
    for frames at their own size (a model trained on crops of randomly scaled frames); `boundary_network`:
    the model with its checkpoint's training-only boundary head (`load_segmenter(boundaries=True)`), for
    `predict_boundaries`.
    """

    model: torch.nn.Module
    device: torch.device
    input_size: tuple[int, int] | None
    amp: torch.dtype | None = None
    channels_last: bool = False
    boundary_network: TrainingNetwork | None = None

    @property
    def in_channels(self) -> int:
        """3 (RGB) or 4 (RGB + edge, dlse-hed)."""
        return int(self.model.in_channels)

    @property
    def num_classes(self) -> int:
        return int(self.model.model_args["num_classes"])

    def predict(self, images: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
        """uint8 (N, C, h, w) frames, on any device -> uint8 (N, H, W) trainIds of `output_size` on
        the model's device: the logits, in float32, upsampled bilinearly to that size, then argmax."""
        with torch.inference_mode(), autocast(self.device, self.amp):
            return trainids(self.model(model_input(images, self.device, self.channels_last)), output_size)

    def predict_boundaries(self, images: torch.Tensor, output_size: tuple[int, int]
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """As `predict` (the same trainIds), and the boundary head's map: its logits upsampled bilinearly
        to `output_size`, sigmoid, as uint8 (N, H, W) round(255 p). Needs `boundary_network`."""
        if self.boundary_network is None:
            raise ValueError("this Segmenter was loaded without its boundary head (load_segmenter(boundaries=True))")
        with torch.inference_mode(), autocast(self.device, self.amp):
            outputs = self.boundary_network(model_input(images, self.device, self.channels_last))
            boundary = F.interpolate(outputs.boundary.unsqueeze(1).float(), size=tuple(output_size), mode="bilinear",
                                     align_corners=False)
            return trainids(outputs.out, output_size), boundary[:, 0].sigmoid().mul(255).round().to(torch.uint8)


def trainids(logits: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
    """Logits (N, C, h, w) -> uint8 (N, H, W) trainIds of `output_size`: upsampled in float32, then argmax."""
    logits = F.interpolate(logits.float(), size=tuple(output_size), mode="bilinear", align_corners=False)
    return logits.argmax(1).to(torch.uint8)


def load_model(checkpoint_path: str | os.PathLike, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """The model a checkpoint holds, in eval mode on `device`, and the checkpoint."""
    checkpoint = load_checkpoint(checkpoint_path)
    # Built on the meta device (no memory, no random initialisation: 1.1 s on a 2-core CPU), then given the
    # checkpoint's tensors; the state dict holds every parameter and buffer, so nothing stays on meta.
    with torch.device("meta"):
        model = build_model(checkpoint["variant"], backbone_weights="none", **checkpoint["model_args"])
    try:
        model.load_state_dict(checkpoint["model"], assign=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise SegnetError(f"{checkpoint_path}: the weights do not fit a {checkpoint['variant']} model ({first})",
                          checkpoint_path) from None
    return model.to(device).eval(), checkpoint


def checkpoint_eval_size(checkpoint: dict) -> tuple[int, int] | None:
    """The size a checkpoint's model runs at by default: its schedule's last stage size, the size it saw
    whole frames at; None (each frame's own size) for a model trained on crops of frames scaled around
    their stored size (`--scale-range`), as mmsegmentation runs its Cityscapes models on whole frames."""
    config = TrainConfig.from_json(checkpoint["config"])
    return None if config.scale_range is not None else config.schedule[-1].size


def load_segmenter(checkpoint_path: str | os.PathLike, device: torch.device, amp: bool = False,
                   channels_last: bool | None = None, boundaries: bool = False) -> Segmenter:
    """The `Segmenter` of a checkpoint on `device`.

    `amp`: bfloat16 autocast where it is native (elsewhere float32, with a warning); `channels_last`:
    None chooses as training does (`segnet.backends.use_channels_last`: on CUDA); `boundaries`: also
    the checkpoint's boundary head (dl-boundary, dl-hed-head), for `Segmenter.predict_boundaries`.

    Raises:
        SegnetError: as `load_model`; with `boundaries`, a checkpoint without a boundary head.
    """
    model, checkpoint = load_model(checkpoint_path, device)
    network = load_boundary_network(checkpoint_path, checkpoint, model, device) if boundaries else None
    layout = use_channels_last(device, channels_last)
    if layout:
        model = model.to(memory_format=torch.channels_last)
        network = None if network is None else network.to(memory_format=torch.channels_last)
    return Segmenter(model, device, checkpoint_eval_size(checkpoint), amp_dtype(device) if amp else None, layout,
                     network)


def load_boundary_network(checkpoint_path: str | os.PathLike, checkpoint: dict, model: torch.nn.Module,
                          device: torch.device) -> TrainingNetwork:
    """`model` with the checkpoint's boundary head, in eval mode (a SegnetError where it has none)."""
    if checkpoint.get("boundary_head") is None:
        raise SegnetError(f"{checkpoint_path}: a {checkpoint['variant']} checkpoint holds no boundary head "
                          "(dl-boundary and dl-hed-head train one)", checkpoint_path)
    network = TrainingNetwork(model, aux_head=False)
    network.boundary_head.load_state_dict(checkpoint["boundary_head"])
    return network.to(device).eval()


def frame_at_size(frame: np.ndarray, size: tuple[int, int] | None, levels: int = DEFAULT_LEVELS) -> np.ndarray:
    """(H, W, C) uint8 -> `size` = (h, w) as a split built with `levels` resolution levels reads it
    (`SplitReader.read`): the smallest level at least `size`, resized the rest of the way by area
    averaging. Levels past what the frame's size allows are not stored, so not used. None: as it is."""
    if size is None:
        return frame
    height, width = frame.shape[:2]
    level = choose_level(height, width, min(levels, max_levels(height, width)), size)
    return resize_frame(downsample_frame(frame, level), size)
