"""AlexNet's shapes and the sizes its docstring promises."""

from __future__ import annotations

import pytest
import torch

from cifar_tune.models import FORWARD_FLOPS_PER_IMAGE, AlexNet, build_model
from cifar_tune.orchestrator.config import ModelConfig


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


def test_forward_flops_constant() -> None:
    assert round(FORWARD_FLOPS_PER_IMAGE / 1e6, 1) == 338.6
    assert "338.6 MFLOP" in AlexNet.__doc__
