"""The default model: a random-weight MLP of selectable size.

4 × Linear(4096, 4096) in float32 is 4 · 4096² · 4 B = 256 MiB of weights, big
enough that one copy per worker is visible in a memory table. Latency does
not depend on the weight values, so random weights are fine.
Taught in: chapters/02_gil.ipynb.
"""

from __future__ import annotations

import torch
from torch import nn


def build_mlp(width: int = 4096, depth: int = 4, seed: int = 0) -> nn.Sequential:
    """``depth`` Linear(width, width) layers with ReLU between them, in eval mode."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i in range(depth):
        layers.append(nn.Linear(width, width))
        if i < depth - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).eval()


def mlp_weight_bytes(width: int = 4096, depth: int = 4) -> int:
    """Bytes of float32 weights and biases."""
    return depth * (width * width + width) * 4


def mlp_flops(batch: int, width: int = 4096, depth: int = 4) -> int:
    """Floating-point operations of one forward pass (2 per multiply-add)."""
    return 2 * batch * depth * width * width
