"""LoRA on the query and value parts of SAM's fused qkv projection."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class LoRAQKV(nn.Linear):
    """A fused qkv `nn.Linear` with rank-r updates on q and v: W_q + B_q A_q, W_v + B_v A_v.

    It subclasses `nn.Linear` so that `weight` and `bias` keep SAM's state-dict names
    (`...attn.qkv.weight`): official checkpoints load without renaming. A is kaiming-uniform and
    B is zero, so an untrained adapter leaves the frozen projection exactly unchanged.
    """

    def __init__(self, dim: int, rank: int, bias: bool = True) -> None:
        super().__init__(dim, 3 * dim, bias=bias)
        self.dim = dim
        self.rank = rank
        self.lora_q_a = nn.Parameter(torch.empty(rank, dim))
        self.lora_q_b = nn.Parameter(torch.zeros(dim, rank))
        self.lora_v_a = nn.Parameter(torch.empty(rank, dim))
        self.lora_v_b = nn.Parameter(torch.zeros(dim, rank))
        nn.init.kaiming_uniform_(self.lora_q_a, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.lora_v_a, a=math.sqrt(5))

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int) -> LoRAQKV:
        """Wrap an existing fused qkv projection (its weights are copied, not re-initialised)."""
        return copy_linear(cls(linear.in_features, rank, bias=linear.bias is not None), linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = F.linear(x, self.weight, self.bias)
        delta_q = (x @ self.lora_q_a.t()) @ self.lora_q_b.t()
        delta_v = (x @ self.lora_v_a.t()) @ self.lora_v_b.t()
        zeros = torch.zeros_like(delta_q)
        return qkv + torch.cat([delta_q, zeros, delta_v], dim=-1)


def copy_linear(layer: nn.Module, linear: nn.Linear) -> nn.Module:
    """`layer` with `linear`'s weight and bias copied in (a LoRA wrapper over a pretrained projection)."""
    with torch.no_grad():
        layer.weight.copy_(linear.weight)
        if linear.bias is not None:
            layer.bias.copy_(linear.bias)
    return layer
