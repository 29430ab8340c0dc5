"""AlexNet sized for 32x32 CIFAR-10 images."""

from __future__ import annotations

import torch
from torch import nn

from cifar_tune.config import ModelConfig


def _conv(c_in: int, c_out: int, batch_norm: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(nn.ReLU(inplace=True))
    return layers


class AlexNet(nn.Module):
    """AlexNet's shape (five convs, three FC layers, dropout) scaled to 32x32 inputs.

    The ImageNet original's 11x11 stride-4 stem would reduce a 32x32 image to
    nothing, so every conv is 3x3 stride 1 and the three max-pools halve 32 -> 4:

        conv 3->64,    pool -> 16x16
        conv 64->192,  pool ->  8x8
        conv 192->384
        conv 384->256
        conv 256->256, pool ->  4x4
        dropout, fc 4096->512, dropout, fc 512->512, fc 512->10

    4,617,034 parameters without batch norm, 4,618,186 with it (the convs drop
    their biases, BatchNorm adds a scale and shift per channel), and 338.6 MFLOP
    per image forward (`forward_flops_per_image` counts them on the model).
    `batch_norm=False` gives the original normalization-free network; `width` scales every
    conv's channels and the hidden FC size (rounded; 1.0 is the network above).
    """

    def __init__(self, num_classes: int = 10, dropout: float = 0.5, batch_norm: bool = True,
                 width: float = 1.0) -> None:
        super().__init__()
        pool = lambda: nn.MaxPool2d(2)  # noqa: E731
        c1, c2, c3, c4, hidden = (max(1, round(c * width)) for c in (64, 192, 384, 256, 512))
        self.features = nn.Sequential(
            *_conv(3, c1, batch_norm), pool(),
            *_conv(c1, c2, batch_norm), pool(),
            *_conv(c2, c3, batch_norm),
            *_conv(c3, c4, batch_norm),
            *_conv(c4, c4, batch_norm), pool(),
        )
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(c4 * 4 * 4, hidden), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def build_model(config: ModelConfig, channels_last: bool = False) -> AlexNet:
    model = AlexNet(dropout=config.dropout, batch_norm=config.batch_norm, width=config.width)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def forward_flops_per_image(model: nn.Module | None = None) -> int:
    """FLOPs of one forward pass of one 32x32 image, counted by torch's FlopCounterMode on the model
    (convolutions and matmuls, 2 per multiply-add; pools, ReLU and batch norm are not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = model if model is not None else AlexNet()
    was_training = model.training
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(torch.zeros(1, 3, 32, 32, device=next(model.parameters()).device))
    model.train(was_training)
    return counter.get_total_flops()
