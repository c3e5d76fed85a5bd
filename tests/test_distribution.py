"""Where each process trains and what it keeps: device per rank, SyncBatchNorm's default, the random
states a checkpoint holds, every frame counted once, and backend settings put back."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segnet.backends import backend_settings, use_channels_last
from segnet.checkpoint import rng_state, set_rng_state
from segnet.data import EpochSampler, normalise
from segnet.devices import rank_device
from segnet.errors import SegnetOptionError
from segnet.metrics import DeviceConfusion, confusion_matrix
from segnet.train import sync_batch_norm


@pytest.mark.parametrize("requested, local_rank, local_world, gpus, expected", [
    ("cpu", None, 1, 0, "cpu"),
    ("cpu", 3, 8, 8, "cpu"),
    ("auto", None, 1, 0, "cpu"),
    ("auto", 2, 4, 0, "cpu"),
    ("auto", None, 1, 2, "cuda"),
    ("auto", 3, 4, 4, "cuda:3"),
    ("cuda", None, 1, 1, "cuda"),
    ("cuda", 0, 2, 2, "cuda:0"),
    ("cuda", 1, 2, 2, "cuda:1"),
    ("cuda:1", None, 1, 2, "cuda:1"),
    ("cuda:1", 0, 1, 2, "cuda:1"),  # torchrun with one process on this machine: its GPU as named
    ("cuda", 0, 1, 0, "cuda"),  # no GPU: left for resolve_device to refuse
])
def test_rank_device(requested, local_rank, local_world, gpus, expected):
    assert rank_device(requested, local_rank, local_world, gpus) == expected


def test_rank_device_refusals():
    with pytest.raises(SegnetOptionError, match="--device cuda:1: under torchrun with 2 processes"):
        rank_device("cuda:1", 1, 2, 2)
    with pytest.raises(SegnetOptionError, match="LOCAL_RANK 2 but this machine shows 2 GPU"):
        rank_device("cuda", 2, 3, 2)


def test_sync_batch_norm_defaults_to_several_gpus():
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert sync_batch_norm(None, cuda, 2) and not sync_batch_norm(None, cuda, 1)
    assert not sync_batch_norm(None, cpu, 2) and not sync_batch_norm(False, cuda, 4)
    assert not sync_batch_norm(True, cuda, 1)  # one process: nothing to synchronise
    with pytest.raises(SegnetOptionError, match="--sync-bn: SyncBatchNorm runs on GPUs only"):
        sync_batch_norm(True, cpu, 2)


def test_channels_last_default():
    assert use_channels_last(torch.device("cuda", 0), None)
    assert use_channels_last(torch.device("cpu"), True) and not use_channels_last(torch.device("cuda"), False)


def test_rng_state_on_a_cpu_restores_every_generator():
    torch.manual_seed(5)
    np.random.seed(5)
    state = rng_state(torch.device("cpu"))
    assert set(state) == {"torch", "numpy", "numpy_pos", "python"}  # no CUDA state for a CPU run
    assert state["torch"].dtype == torch.uint8 and len(state["numpy"]) == 624
    import random

    drawn = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(state, torch.device("cpu"))
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(drawn[0], again[0]) and np.array_equal(drawn[1], again[1]) and drawn[2] == again[2]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")
def test_rng_state_on_cuda_keeps_the_device_generator():
    device = torch.device("cuda", torch.cuda.current_device())
    torch.manual_seed(7)
    state = rng_state(device)
    assert state["cuda"].dtype == torch.uint8
    drawn = torch.rand(4, device=device)
    set_rng_state(state, device)
    assert torch.equal(torch.rand(4, device=device), drawn)


def test_unpadded_ranks_serve_every_item_once():
    for size, world in ((5, 2), (7, 3), (2, 4), (8, 2)):
        shares = [EpochSampler(size, shuffle=False, num_replicas=world, rank=r, pad=False).items()
                  for r in range(world)]
        served = sorted(item.index for share in shares for item in share)
        assert served == list(range(size))
        assert [len(EpochSampler(size, shuffle=False, num_replicas=world, rank=r, pad=False))
                for r in range(world)] == [len(s) for s in shares]
    padded = [EpochSampler(5, shuffle=False, num_replicas=2, rank=r).items() for r in range(2)]
    assert len(padded[0]) == len(padded[1]) == 3  # training: as many steps on every rank


def test_device_confusion_equals_the_checked_matrix():
    generator = torch.Generator().manual_seed(2)
    pred = torch.randint(0, 19, (3, 10, 12), generator=generator)
    label = torch.randint(0, 19, (3, 10, 12), generator=generator).to(torch.uint8)
    label[:, :3] = 255
    matrix = DeviceConfusion(19, torch.device("cpu"))
    matrix.update(pred[:2], label[:2])
    matrix.update(pred[2:], label[2:])
    matrix.reduce()  # no process group: unchanged
    assert np.array_equal(matrix.numpy(), confusion_matrix(pred, label))


def test_normalise_constants_follow_the_channel_count():
    images = torch.full((2, 4, 3, 5), 255, dtype=torch.uint8)
    rgb, rgbe = normalise(images[:, :3]), normalise(images)
    assert torch.equal(rgb, rgbe[:, :3]) and torch.all(rgbe[:, 3] == 1)
    assert torch.allclose(rgb[0, 0], torch.tensor((1 - 0.485) / 0.229))


def test_backend_settings_are_put_back():
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)
    with backend_settings(torch.device("cpu"), deterministic=True):
        assert torch.are_deterministic_algorithms_enabled()
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark) == before
