"""Pixel shuffle and the `mlp1` projector (shared/reference/nvlm-d.md §3)."""

from __future__ import annotations

import torch
from torch import nn


def pixel_shuffle(x: torch.Tensor, *, ratio: float = 0.5, ps_version: str = "v2") -> torch.Tensor:
    """[n, w, h, c] -> [n, w*r, h*r, c/r^2].

    v2: output token (i, j) holds patches [(2i,2j), (2i,2j+1), (2i+1,2j), (2i+1,2j+1)] in that
    channel order (row-major). v1 leaves the spatial axes transposed.
    """
    n, w, h, c = x.shape
    x = x.reshape(n, w, int(h * ratio), int(c / ratio))
    x = x.permute(0, 2, 1, 3).contiguous()
    x = x.reshape(n, int(h * ratio), int(w * ratio), int(c / (ratio * ratio)))
    if ps_version != "v1":
        x = x.permute(0, 2, 1, 3).contiguous()
    return x


class Projector(nn.Sequential):
    """mlp1 = LayerNorm(c*4) -> Linear(hidden) -> GELU -> Linear(llm_hidden); names mlp1.{0,1,3}."""

    def __init__(self, in_features: int, hidden: int, out_features: int, *, bias: bool):
        super().__init__(
            nn.LayerNorm(in_features),  # eps 1e-5 (PyTorch default), as in the HF code
            nn.Linear(in_features, hidden, bias=bias),
            nn.GELU(),
            nn.Linear(hidden, out_features, bias=bias),
        )
