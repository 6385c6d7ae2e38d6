"""The default model: a random-weight MLP of selectable size.

4 × Linear(4096, 4096) in float32 is 4 · 4096² · 4 B = 256 MiB of weights, big
enough that one copy per worker is visible in a memory table. Latency does
not depend on the weight values, so random weights are fine.
Taught in: chapters/02_gil.ipynb.
"""

from __future__ import annotations

import warnings
from typing import Callable

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


#: How a forward pass multiplies: torch's dense matmul (``addmm`` on the BLAS torch was built with, MKL on
#: the book's machines), or oneDNN's inner product on weights converted once to oneDNN tensors.
KERNELS = ("dense", "onednn")


def forward_function(model: nn.Sequential, kernel: str = "dense") -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> model(x)`` computed with ``kernel`` (see :data:`KERNELS`); the same numbers up to rounding.

    MKL's sgemm on one thread costs nearly a batch-32 pass already at 8 rows (about 3× a batch-1 pass,
    which takes a matrix-vector path), so the batches a latency objective allows cost several times
    more per input than full ones. oneDNN's inner product grows steadily with the batch instead.
    ``"onednn"`` keeps a second copy of the weights (oneDNN tensors); ``model`` itself is unchanged.
    """
    if kernel == "dense":
        return model
    if kernel != "onednn":
        raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
    with warnings.catch_warnings():  # torch marks the ScriptModule it is written as deprecated, not oneDNN
        warnings.simplefilter("ignore", DeprecationWarning)
        from torch.utils.mkldnn import MkldnnLinear

    layers = nn.Sequential(*[MkldnnLinear(m, torch.float32) if isinstance(m, nn.Linear) else m for m in model])
    return lambda x: layers(x.to_mkldnn()).to_dense()
