"""parse_device: the one place that turns a user's device argument into a torch.device."""

from __future__ import annotations

import torch

from .errors import DeviceError


def parse_device(device) -> torch.device:
    """'cpu', 'cuda', 'cuda:N' or a torch.device; DeviceError if it does not exist here."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise DeviceError(f"device: expected 'cpu', 'cuda' or 'cuda:N', got {device!r}") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {device!r}: CUDA is not available on this machine (torch {torch.__version__})")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"device {device!r}: expected an index below {torch.cuda.device_count()}, got {dev.index}")
    elif dev.type != "cpu":
        raise DeviceError(f"device: expected 'cpu' or 'cuda', got {device!r}")
    return dev
