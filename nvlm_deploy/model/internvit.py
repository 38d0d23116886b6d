"""InternViT, the NVLM-D vision encoder (and the InternVL variants), as nn.Modules.

Parameter names match the HF checkpoint under `vision_model.` exactly. NVLM-D specifics
(shared/reference/nvlm-d.md §2): zero dummy heads appended to the real ones, qk-norm whose variance
covers the real heads only, RMSNorm in fp32, layer scales ls1/ls2, exact GELU, no final norm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nvlm_deploy.config import VisionConfig


class InternRMSNorm(nn.Module):
    """RMSNorm in fp32, cast back, then scaled. `var_features` < dim: variance over a prefix only."""

    def __init__(self, dim: int, *, eps: float, var_features: int | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.var_features = var_features or dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        var = x32[..., : self.var_features].pow(2).sum(-1, keepdim=True) / self.var_features
        return (x32 * torch.rsqrt(var + self.eps)).to(dtype) * self.weight


def make_norm(config: VisionConfig, dim: int) -> nn.Module:
    if config.norm_type == "layer_norm":
        return nn.LayerNorm(dim, eps=config.layer_norm_eps)
    return InternRMSNorm(dim, eps=config.layer_norm_eps)


class VisionEmbeddings(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        d = config.hidden_size
        self.class_embedding = nn.Parameter(torch.zeros(1, 1, d))
        self.patch_embedding = nn.Conv2d(config.num_channels, d, kernel_size=config.patch_size,
                                         stride=config.patch_size)
        self.position_embedding = nn.Parameter(torch.zeros(1, config.num_patches + 1, d))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # pixel_values: [T, 3, S, S] -> [T, 1 + P, D]; no position interpolation (NVLM-D HF code)
        patches = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))
        patches = patches.flatten(2).transpose(1, 2)  # [T, P, D], row-major patch order
        cls = self.class_embedding.expand(patches.shape[0], -1, -1).to(patches.dtype)
        return torch.cat([cls, patches], dim=1) + self.position_embedding.to(patches.dtype)


class VisionAttention(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.heads = config.total_heads
        self.head_dim = config.head_dim
        inner = self.heads * self.head_dim  # real + dummy features
        self.qkv = nn.Linear(config.hidden_size, 3 * inner, bias=config.qkv_bias)
        self.qk_normalization = config.qk_normalization
        if config.qk_normalization:
            # variance over the real heads only: features [0, hidden_size) of q and k
            self.q_norm = InternRMSNorm(inner, eps=config.layer_norm_eps, var_features=config.hidden_size)
            self.k_norm = InternRMSNorm(inner, eps=config.layer_norm_eps, var_features=config.hidden_size)
        self.proj = nn.Linear(inner, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        # qkv feature index = s * inner + head * head_dim + d, s in (q, k, v)
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads * self.head_dim).unbind(2)  # [B, N, inner]
        if self.qk_normalization:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (t.reshape(b, n, self.heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        attn = ((q * self.head_dim**-0.5) @ k.transpose(-2, -1)).softmax(dim=-1)  # input dtype
        out = (attn @ v).transpose(1, 2).reshape(b, n, -1)  # [B, N, inner]
        return self.proj(out)


class VisionMlp(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))  # exact erf GELU


class VisionLayer(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        d = config.hidden_size
        self.norm1 = make_norm(config, d)
        self.attn = VisionAttention(config)
        self.ls1 = nn.Parameter(config.initializer_factor * torch.ones(d))
        self.norm2 = make_norm(config, d)
        self.mlp = VisionMlp(config)
        self.ls2 = nn.Parameter(config.initializer_factor * torch.ones(d))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.attn(self.norm1(h)) * self.ls1
        return h + self.mlp(self.norm2(h)) * self.ls2


class VisionEncoder(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.layers = nn.ModuleList(VisionLayer(config) for _ in range(config.num_hidden_layers))


class InternVisionModel(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.config = config
        self.embeddings = VisionEmbeddings(config)
        self.encoder = VisionEncoder(config)

    def forward(self, pixel_values: torch.Tensor, *, select_layer: int = -1) -> torch.Tensor:
        """[T, 3, S, S] -> hidden states [T, 1 + P, D] of `select_layer` (HF hidden_states index)."""
        n_layers = len(self.encoder.layers)
        stop = select_layer if select_layer >= 0 else n_layers + 1 + select_layer
        if not 0 <= stop <= n_layers:
            raise ValueError(f"select_layer {select_layer} is outside the {n_layers} vision layers")
        h = self.embeddings(pixel_values)
        for layer in self.encoder.layers[:stop]:
            h = layer(h)
        return h
