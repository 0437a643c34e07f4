"""Mixed precision, as `train.dtype` asks: float32, bfloat16 (autocast on CPU and CUDA) or float16 (CUDA only,
with a gradient scaler), or auto: bfloat16 on a CUDA device that supports it, float32 elsewhere. The master
weights, the optimizer state and the loss stay in float32."""

from __future__ import annotations

import contextlib

import torch

from engine.config import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str, device: torch.device) -> str:
    """The dtype a run trains in: `name`, with auto made concrete for `device`."""
    if name != "auto":
        return name
    # bfloat16 keeps float32's range, so it needs no loss scaling; pre-Ampere cards emulate it slowly
    if device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False):
        return "bfloat16"
    return "float32"


class Precision:
    def __init__(self, dtype: str, device: torch.device):
        dtype = resolve_dtype(dtype, device)
        if dtype == "float16" and device.type != "cuda":
            raise ConfigError(f"train.dtype = 'float16' needs a CUDA device and this run is on {device.type}; "
                              "use 'bfloat16' or 'float32'.")
        self.name, self.device = dtype, device
        self.dtype = DTYPES[dtype]
        # float16's narrow range underflows small gradients: scale the loss up, unscale before the step
        self.scaler = torch.amp.GradScaler("cuda") if dtype == "float16" else None

    def autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, optimizer) -> bool:
        """Before the optimizer step: gradients back to their true size; False if any is not finite
        (float16 overflow: the step is skipped and the scale shrinks)."""
        if self.scaler is None:
            return True
        for inner in optimizer.optimizers:
            self.scaler.unscale_(inner)
        grads = [p.grad for p in optimizer.params if p.grad is not None]
        finite = bool(torch.stack([g.float().abs().max() for g in grads]).isfinite().all()) if grads else True
        self.scaler.update()
        return finite

    def state_dict(self) -> dict:
        return {"scaler": self.scaler.state_dict()} if self.scaler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
