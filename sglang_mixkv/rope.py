"""Rotary position embedding in plain torch (neox / HF-Llama "rotate half" layout).

Used by both the SGLang model and the reference, on every device: SGLang's own
RotaryEmbedding needs a kernel that a CPU-only box lacks, and a consumer layer rotates
its queries only, which SGLang's fused q+k kernel does not offer.
"""

from __future__ import annotations

import torch
from torch import nn


def inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))


class Rope(nn.Module):
    """``q``/``k`` of shape ``[tokens, heads * head_dim]`` rotated by ``positions``.

    The cos/sin table is float32, built once for ``max_position`` positions."""

    def __init__(self, head_dim: int, max_position: int, theta: float):
        super().__init__()
        self.head_dim = head_dim
        t = torch.arange(max_position, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq(head_dim, theta))  # [P, D/2]
        self.register_buffer("cos", freqs.cos(), persistent=False)
        self.register_buffer("sin", freqs.sin(), persistent=False)

    def rotate(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.view(shape[0], -1, self.head_dim).float()
        cos = self.cos[positions].unsqueeze(1)  # [T, 1, D/2]
        sin = self.sin[positions].unsqueeze(1)
        x1, x2 = x.chunk(2, dim=-1)
        out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
        return out.view(shape)

    def forward(self, positions: torch.Tensor, q: torch.Tensor,
                k: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        dtype = q.dtype
        q = self.rotate(q, positions).to(dtype)
        if k is not None:
            k = self.rotate(k, positions).to(dtype)
        return q, k

