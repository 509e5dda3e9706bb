"""The torch device a pipeline runs on, from the node's ``workers.device`` (auto | cpu | cuda).

``cpu`` is CPU even on a GPU machine; ``cuda`` on a machine where torch sees no GPU is an error, said when
the pipeline is built and, by the node, at start-up; ``auto`` takes CUDA when torch sees it. torch is
imported only to answer about CUDA, so ``node/`` can check a configuration without paying for it on CPU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipelines.base import Device

if TYPE_CHECKING:
    import torch


class DeviceUnavailable(RuntimeError):
    """The requested device is not on this machine."""


def check_device(requested: Device) -> None:
    """Raise DeviceUnavailable when ``requested`` cannot be used here (only ``cuda`` can fail)."""
    if requested == "cuda" and not _cuda_available():
        raise DeviceUnavailable(
            "device 'cuda' was requested but torch sees no CUDA device on this machine "
            "(torch.cuda.is_available() is False); use 'cpu' or 'auto'"
        )


def resolve_device(requested: Device) -> torch.device:
    """The torch device for ``requested``: ``auto`` picks CUDA when present, else CPU."""
    import torch

    check_device(requested)
    if requested == "auto":
        return torch.device("cuda" if _cuda_available() else "cpu")
    return torch.device(requested)


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())
