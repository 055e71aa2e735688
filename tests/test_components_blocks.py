"""Convolutional blocks (`adlearn.components.blocks`): shapes, the residual identity, up/down resampling,
and the parameter names Reverse Distillation's saved models depend on."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adlearn.components import BasicBlock, conv_bn_relu, residual_stage


def zero_residual_branch(block: BasicBlock) -> None:
    """Make F(x) = 0: the last batch norm of the residual branch outputs γ·x̂ + β with γ = β = 0."""
    last_norm = block.residual[-1]
    with torch.no_grad():
        last_norm.weight.zero_()
        last_norm.bias.zero_()


@pytest.mark.parametrize(
    "stride, kernel_size, size, expected", [(1, 3, 9, 9), (2, 3, 9, 5), (2, 3, 8, 4), (1, 1, 7, 7)]
)
def test_conv_bn_relu_shapes(stride, kernel_size, size, expected):
    block = conv_bn_relu(3, 5, stride=stride, kernel_size=kernel_size)
    out = block(torch.randn(2, 3, size, size))
    assert out.shape == (2, 5, expected, expected)
    assert float(out.detach().min()) >= 0.0  # ends with a ReLU


def test_conv_bn_relu_is_a_conv_a_batch_norm_and_a_relu_by_hand():
    torch.manual_seed(0)
    block = conv_bn_relu(3, 4, stride=2).eval()
    conv, norm, _ = block
    with torch.no_grad():
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.5, 2)
        norm.weight.uniform_(0.5, 2)
        norm.bias.uniform_(-1, 1)
    x = torch.randn(2, 3, 8, 8)
    y = F.conv2d(x, conv.weight, stride=2, padding=1)
    y = (y - norm.running_mean[:, None, None]) / torch.sqrt(norm.running_var[:, None, None] + norm.eps)
    expected = torch.relu(y * norm.weight[:, None, None] + norm.bias[:, None, None])
    torch.testing.assert_close(block(x), expected)
    assert conv.bias is None  # the batch norm carries the bias


def test_conv_bn_relu_without_batch_norm_and_bad_options():
    block = conv_bn_relu(3, 4, kernel_size=5, bias=True, batch_norm=False)
    assert [type(m) for m in block] == [nn.Conv2d, nn.ReLU]
    assert block[0].bias is not None and block[0].padding == (2, 2)
    with pytest.raises(ValueError, match="stride"):
        conv_bn_relu(3, 4, stride=0)


@pytest.mark.parametrize(
    "resample, in_channels, out_channels, size, expected_size, projects",
    [
        (None, 6, 6, 8, 8, False),
        (None, 6, 10, 8, 8, True),
        ("down", 6, 10, 8, 4, True),
        ("down", 6, 10, 7, 4, True),
        ("up", 10, 6, 4, 8, True),
    ],
)
def test_basic_block_shapes_and_shortcut(resample, in_channels, out_channels, size, expected_size, projects):
    block = BasicBlock(in_channels, out_channels, resample)
    out = block(torch.randn(2, in_channels, size, size))
    assert out.shape == (2, out_channels, expected_size, expected_size)
    assert float(out.detach().min()) >= 0.0
    assert isinstance(block.shortcut, nn.Identity) != projects


def test_zeroed_residual_branch_leaves_the_identity():
    torch.manual_seed(1)
    block = BasicBlock(6, 6).eval()
    zero_residual_branch(block)
    x = torch.randn(2, 6, 5, 5)
    torch.testing.assert_close(block(x), torch.relu(x))  # ReLU(0 + x)
    positive = x.abs()
    torch.testing.assert_close(block(positive), positive)  # non-negative inputs pass unchanged


def test_zeroed_residual_branch_leaves_the_resampled_shortcut():
    """With F = 0 the output is ReLU(BN(shortcut conv(x))): down = a strided 1×1 conv, up = a 2×2 transposed conv."""
    torch.manual_seed(2)
    x = torch.randn(1, 4, 6, 6)
    down = BasicBlock(4, 3, "down").eval()
    zero_residual_branch(down)
    conv, norm = down.shortcut
    expected = torch.relu(norm(F.conv2d(x, conv.weight, stride=2)))
    torch.testing.assert_close(down(x), expected)
    # a strided 1×1 convolution reads every second pixel, starting at the first
    torch.testing.assert_close(F.conv2d(x, conv.weight, stride=2), F.conv2d(x[:, :, ::2, ::2], conv.weight))

    up = BasicBlock(4, 3, "up").eval()
    zero_residual_branch(up)
    conv, norm = up.shortcut
    weight = conv.weight  # (C_in, C_out, 2, 2)
    by_hand = torch.zeros(1, 3, 12, 12)
    for di in range(2):  # every input pixel paints a 2×2 patch
        for dj in range(2):
            by_hand[:, :, di::2, dj::2] = torch.einsum("bchw,co->bohw", x, weight[:, :, di, dj])
    torch.testing.assert_close(up(x), torch.relu(norm(by_hand)))


def test_residual_stage_resamples_once():
    stage = residual_stage(8, 16, "down", blocks=3)
    assert len(stage) == 3
    assert not isinstance(stage[0].shortcut, nn.Identity)
    assert all(isinstance(block.shortcut, nn.Identity) for block in stage[1:])
    assert stage(torch.randn(2, 8, 8, 8)).shape == (2, 16, 4, 4)
    assert residual_stage(16, 8, "up", blocks=1)(torch.randn(2, 16, 4, 4)).shape == (2, 8, 8, 8)


def test_bad_resample_and_block_count_are_named():
    with pytest.raises(ValueError, match="resample"):
        BasicBlock(4, 4, "sideways")
    with pytest.raises(ValueError, match="blocks"):
        residual_stage(4, 4, "down", blocks=0)


def test_parameter_names_are_stable():
    """Saved Reverse Distillation models store these keys: the block layout must not move."""
    keys = list(residual_stage(4, 8, "down", blocks=2).state_dict())
    assert keys[:6] == [
        "0.residual.0.weight",
        "0.residual.1.weight",
        "0.residual.1.bias",
        "0.residual.1.running_mean",
        "0.residual.1.running_var",
        "0.residual.1.num_batches_tracked",
    ]
    assert "0.shortcut.0.weight" in keys and "0.shortcut.1.weight" in keys
    assert "1.residual.3.weight" in keys and not any(key.startswith("1.shortcut") for key in keys)
    assert list(conv_bn_relu(3, 4).state_dict())[:2] == ["0.weight", "1.weight"]
