"""Int8 inference of the denoiser on CPU: the same trained weights, run with int8 matrix products.

On a CPU without AVX-512 the fp32 matrix products of the default model already run near the cores' peak, so the
only way to make a MAS sample faster there is cheaper arithmetic: every linear layer of the transformer (attention
in/out projections and the feed-forward pair) becomes a dynamically quantised int8 layer (weights per output
channel, activations per tensor, through PyTorch's fbgemm/oneDNN kernels), attention itself runs as one fused fp32
``scaled_dot_product_attention``. The input/output projections and the timestep MLP stay fp32 (they are tiny).

Sampling with it is an approximation of fp32 sampling: ``benchmarks/results/int8_quality.md`` measures the
difference on trained models. Training never uses it; ``models.precision`` decides when sampling does.
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from models.denoiser import MotionDenoiser


class QuantisationError(ValueError):
    """A model or device that int8 inference does not support."""


def int8_available() -> bool:
    return hasattr(torch.ops.quantized, "linear_dynamic") and bool(torch.backends.quantized.supported_engines)


def quantize_denoiser(model: MotionDenoiser) -> MotionDenoiser:
    """A copy of ``model`` (left untouched) whose transformer encoder runs int8 linear layers on the CPU."""
    if next(model.parameters()).device.type != "cpu":
        raise QuantisationError("int8 inference runs on the CPU only; move the model to the CPU first")
    fast = copy.deepcopy(model).eval().requires_grad_(False)
    fast.encoder = Int8Encoder(model.encoder)
    return fast


class Int8EncoderLayer(nn.Module):
    """One post-norm ``nn.TransformerEncoderLayer`` (GELU) in inference form with int8 linear layers."""

    def __init__(self, layer: nn.TransformerEncoderLayer):
        super().__init__()
        attention = layer.self_attn
        if layer.norm_first or layer.activation_relu_or_gelu != 2 or not attention.batch_first:
            raise QuantisationError("int8 inference supports the denoiser's post-norm, GELU, batch-first layers only")
        self.num_heads = attention.num_heads
        self.qkv = _int8_linear(attention.in_proj_weight, attention.in_proj_bias)
        self.out = _int8_linear(attention.out_proj.weight, attention.out_proj.bias)
        self.linear1 = _int8_linear(layer.linear1.weight, layer.linear1.bias)
        self.linear2 = _int8_linear(layer.linear2.weight, layer.linear2.bias)
        self.norm1, self.norm2 = copy.deepcopy(layer.norm1), copy.deepcopy(layer.norm2)

    def forward(self, x: torch.Tensor, attend: torch.Tensor | None) -> torch.Tensor:
        """``x [B, L, d]``; ``attend [B, 1, 1, L]`` (True: take part in attention) or None."""
        batch, length, dim = x.shape
        qkv = self.qkv(x).view(batch, length, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        heads = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=attend)
        x = self.norm1(x + self.out(heads.transpose(1, 2).reshape(batch, length, dim)))
        return self.norm2(x + self.linear2(F.gelu(self.linear1(x))))


class Int8Encoder(nn.Module):
    """Drop-in for the denoiser's ``nn.TransformerEncoder`` (same call, same key-padding convention)."""

    def __init__(self, encoder: nn.TransformerEncoder):
        super().__init__()
        if encoder.norm is not None:
            raise QuantisationError("int8 inference supports encoders without a final norm only")
        self.layers = nn.ModuleList(Int8EncoderLayer(layer) for layer in encoder.layers)

    def forward(self, tokens: torch.Tensor, src_key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        attend = None
        if src_key_padding_mask is not None:  # True marks padding, as in nn.TransformerEncoder
            attend = ~src_key_padding_mask.bool()[:, None, None, :]
        for layer in self.layers:
            tokens = layer(tokens, attend)
        return tokens


def _int8_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    """A dynamically quantised linear layer with symmetric per-output-channel int8 weights."""
    weight = weight.detach().float()
    scales = (weight.abs().amax(dim=1).clamp_min(1e-12) / 127.0).double()
    zero_points = torch.zeros(weight.shape[0], dtype=torch.long)
    with warnings.catch_warnings():  # torch marks its eager quantisation API as deprecated; 2.14.1 (pinned) has it
        warnings.simplefilter("ignore")
        layer = torch.ao.nn.quantized.dynamic.Linear(weight.shape[1], weight.shape[0], dtype=torch.qint8)
        quantised = torch.quantize_per_channel(weight, scales, zero_points, 0, torch.qint8)
        layer.set_weight_bias(quantised, None if bias is None else bias.detach().float())
    return layer
