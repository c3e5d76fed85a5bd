"""The deterministic forms of segnet.ops against the torch operations they stand in for on CUDA."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from segnet.ops import global_average, interpolation_matrix, masked_cross_entropy, resize_by_matrices


@pytest.mark.parametrize("in_size, out_size", [((4, 7), (16, 28)), ((8, 14), (32, 64)), ((32, 64), (9, 13)),
                                               ((5, 5), (5, 5)), ((1, 3), (4, 8))])
def test_resize_by_matrices_equals_bilinear_interpolate_forward_and_backward(in_size, out_size):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, *in_size, generator=generator, dtype=torch.float64)
    upstream = torch.randn(2, 3, *out_size, generator=generator, dtype=torch.float64)
    ours_in, torch_in = x.clone().float().requires_grad_(), x.clone().requires_grad_()
    ours = resize_by_matrices(ours_in, out_size)
    expected = F.interpolate(torch_in, size=out_size, mode="bilinear", align_corners=False)
    torch.testing.assert_close(ours.double(), expected, rtol=0, atol=1e-5)
    (ours.double() * upstream).sum().backward()
    (expected * upstream).sum().backward()
    torch.testing.assert_close(ours_in.grad.double(), torch_in.grad, rtol=0, atol=1e-4)


def test_interpolation_rows_sum_to_one():
    matrix = interpolation_matrix(7, 19)
    torch.testing.assert_close(matrix.sum(1), torch.ones(19))
    assert (matrix >= 0).all()


def test_masked_cross_entropy_equals_cross_entropy_with_ignored_pixels():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 19, 6, 10, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 19, (2, 6, 10), generator=generator)
    labels[0, :2] = 255
    ours_in, torch_in = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    ours = masked_cross_entropy(ours_in, labels, 255)
    expected = F.cross_entropy(torch_in, labels, ignore_index=255)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-12)
    ours.backward()
    expected.backward()
    torch.testing.assert_close(ours_in.grad, torch_in.grad, rtol=0, atol=1e-12)


def test_global_average_is_the_channel_mean():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    torch.testing.assert_close(global_average(x), x.double().mean((2, 3), keepdim=True).float())
