"""AlexNet's shapes and the sizes its docstring promises."""

from __future__ import annotations

import pytest
import torch

from cifar_tune.config import ModelConfig
from cifar_tune.models import AlexNet, build_model, forward_flops_per_image


@pytest.mark.parametrize("batch_norm, params", [(False, 4_617_034), (True, 4_618_186)])
def test_parameter_count_matches_docstring(batch_norm: bool, params: int) -> None:
    model = AlexNet(batch_norm=batch_norm)
    assert sum(p.numel() for p in model.parameters()) == params
    assert f"{params:,}" in AlexNet.__doc__


@pytest.mark.parametrize("channels_last", [False, True])
def test_forward_shapes(channels_last: bool) -> None:
    model = build_model(ModelConfig(), channels_last=channels_last).eval()
    x = torch.randn(5, 3, 32, 32)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    assert model(x).shape == (5, 10)
    assert model.features(x).shape == (5, 256, 4, 4)


@pytest.mark.parametrize("width", [0.125, 0.5, 2.0])
def test_width_scales_channels_and_hidden_size(width: float) -> None:
    model = build_model(ModelConfig(width=width)).eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert model.features(torch.randn(2, 3, 32, 32)).shape == (2, round(256 * width), 4, 4)
    assert model.classifier[1].out_features == round(512 * width)
    params = sum(p.numel() for p in model.parameters())
    assert params == pytest.approx(4_618_186 * width**2, rel=0.1)  # conv and FC weights grow as width squared


def _flops_from_layer_shapes(model: torch.nn.Module) -> int:
    """2 x multiply-adds of every conv and linear layer, from the output shapes hooks observe:
    an independent count to hold FlopCounterMode's against."""
    total = 0

    def hook(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, torch.nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total += 2 * output.numel() * k
        elif isinstance(module, torch.nn.Linear):
            total += 2 * output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, 32, 32))
    for handle in handles:
        handle.remove()
    return total


@pytest.mark.parametrize("batch_norm", [True, False])
def test_forward_flops_are_counted_on_the_model(batch_norm: bool) -> None:
    model = AlexNet(batch_norm=batch_norm)
    flops = forward_flops_per_image(model)
    assert model.training  # counting leaves the model's mode alone
    assert flops == _flops_from_layer_shapes(model)
    assert f"{flops / 1e6:.1f} MFLOP" in AlexNet.__doc__  # the docstring quotes the counted number
