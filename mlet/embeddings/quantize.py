"""Row-wise quantisation of deployed embedding tables, and the bytes a deployed embedding takes.

Applied after training to the deployed form (``collapse()``: MLET after the collapse), never while
training. Every ``nn.Embedding`` of the deployed embedding (a table, a QR quotient/remainder table,
a tensor-train core whose rows are its slices, a mixed-dimension table) is replaced by a
:class:`QuantizedTable`; projections kept at inference (mixed dimensions) stay float32.

* ``fp16``: the table in float16.
* ``int8`` / ``int4``: each row ``w`` stored as codes ``q`` in ``0 .. 2^b - 1`` with a per-row
  float16 ``scale`` and ``bias`` (``w ~ q * scale + bias``), as FBGEMM's and TorchRec's inference
  tables (TBE ``INT8`` / ``INT4``: 4 bytes of float16 scale and bias per row). int4 packs two codes
  per byte (low nibble first). ``bias`` is the row minimum rounded down to float16 and ``scale``
  ``(max - bias) / (2^b - 1)`` rounded up, so every entry lies in the representable range and the
  reconstruction error of an entry is at most half a step (``scale / 2``) of its row.

Bytes (``deployed_bytes``): every tensor of the deployed module's ``state_dict`` at its element
size, i.e. what an export stores: tables, codes, scales, biases, kept projections.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

QUANTIZE_MODES = ("none", "fp16", "int8", "int4")
BITS = {"int8": 8, "int4": 4}


def check_quantize(mode: str) -> str:
    if mode not in QUANTIZE_MODES:
        raise ValueError(f"quantize must be one of {', '.join(QUANTIZE_MODES)}; got {mode!r}")
    return mode


def deployed_bytes(module: nn.Module) -> int:
    """Bytes of a deployed module: its ``state_dict`` tensors (parameters, persistent buffers)."""
    return sum(t.numel() * t.element_size() for t in module.state_dict().values() if torch.is_tensor(t))


def _round_fp16(x: torch.Tensor, direction: float) -> torch.Tensor:
    """``x`` (float64) to float16, rounded towards ``direction`` (-inf: down, +inf: up)."""
    h = x.half()
    step = torch.nextafter(h, torch.full_like(h, direction))
    wrong = h.double() > x if direction < 0 else h.double() < x
    return torch.where(wrong, step, h)


def quantize_rows(weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Codes (uint8, one per entry, unpacked), float16 scale and bias per row of ``weight[n, w]``."""
    w = weight.detach().double()
    levels = 2**bits - 1
    lo, hi = w.min(dim=1).values, w.max(dim=1).values
    bias = _round_fp16(lo, float("-inf"))  # <= every entry of the row
    scale = _round_fp16((hi - bias.double()) / levels, float("inf"))  # bias + levels * scale >= the row's max
    # a constant row (scale 0) reconstructs as its bias; keep the division finite
    safe = torch.where(scale.double() > 0, scale.double(), torch.ones_like(hi))
    codes = torch.round((w - bias.double()[:, None]) / safe[:, None]).clamp_(0, levels).to(torch.uint8)
    return codes, scale, bias


def _pack4(codes: torch.Tensor) -> torch.Tensor:
    if codes.shape[1] % 2:
        codes = torch.cat([codes, codes.new_zeros(codes.shape[0], 1)], dim=1)
    return codes[:, 0::2] | (codes[:, 1::2] << 4)


class QuantizedTable(nn.Module):
    """A deployed table ``[n, w]`` stored as float16 or as row-wise int8/int4 codes with float16
    scale and bias. ``forward(index)`` returns the dequantised rows (float32), as ``nn.Embedding``
    does; ``weight`` the whole dequantised table."""

    def __init__(self, weight: torch.Tensor, mode: str) -> None:
        super().__init__()
        check_quantize(mode)
        if mode == "none":
            raise ValueError("QuantizedTable needs quantize=fp16|int8|int4")
        self.mode, self.width = mode, int(weight.shape[1])
        if mode == "fp16":
            self.register_buffer("values", weight.detach().half().clone())
            return
        codes, scale, bias = quantize_rows(weight, BITS[mode])
        self.register_buffer("codes", _pack4(codes) if mode == "int4" else codes)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", bias)

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        if self.mode == "fp16":
            return self.values[index].float()
        codes = self.codes[index]
        if self.mode == "int4":
            codes = torch.stack([codes & 15, codes >> 4], dim=-1).flatten(-2)[..., : self.width]
        return codes.float() * self.scale[index].float().unsqueeze(-1) + self.bias[index].float().unsqueeze(-1)

    @property
    def weight(self) -> torch.Tensor:
        rows = self.values.shape[0] if self.mode == "fp16" else self.codes.shape[0]
        return self.forward(torch.arange(rows, device=(self.values if self.mode == "fp16" else self.codes).device))

    def extra_repr(self) -> str:
        return f"mode={self.mode}, width={self.width}"


def quantize(embedding: nn.Module, mode: str) -> nn.Module:
    """A copy of a deployed embedding with every ``nn.Embedding`` replaced by a
    :class:`QuantizedTable` (``mode="none"``: the embedding itself)."""
    check_quantize(mode)
    if mode == "none":
        return embedding
    out = copy.deepcopy(embedding)
    tables = [(name, m) for name, m in out.named_modules() if isinstance(m, nn.Embedding)]
    for name, table in tables:
        parent_name, _, attr = name.rpartition(".")
        parent = out.get_submodule(parent_name) if parent_name else out
        setattr(parent, attr, QuantizedTable(table.weight, mode))
    return out
