"""Mixed precision for the loop: autocast to bf16/fp16 (CPU or GPU) and, for fp16, a gradient scaler.

bf16 has fp32's exponent range, so it needs no loss scaling; fp16 does (small gradients underflow),
so it gets a ``torch.amp.GradScaler``. Parameters and optimizer state stay fp32 either way.
"""

from __future__ import annotations

import contextlib

import torch

from ..core.config import ConfigError

DTYPES = {
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16, torch.bfloat16: torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16, torch.float16: torch.float16,
}


class MixedPrecision:
    def __init__(self, dtype, device: torch.device):
        if dtype is not None and dtype not in DTYPES:
            raise ConfigError(f"autocast must be None, 'bf16' or 'fp16' (or torch.bfloat16 / torch.float16), got {dtype!r}")
        self.dtype = DTYPES.get(dtype)
        self.device_type = device.type
        self.scaler = torch.amp.GradScaler(device.type) if self.dtype == torch.float16 else None

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def unscale(self, optimizer) -> None:
        """Bring gradients back to their true size (before clipping looks at them)."""
        if self.scaler:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer) -> bool:
        """optimizer.step(); False when the scaler skipped it because the fp16 gradients overflowed
        (it then lowers the scale), so the caller can hold the LR schedule back too."""
        if self.scaler is None:
            optimizer.step()
            return True
        scale = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        return self.scaler.get_scale() >= scale
