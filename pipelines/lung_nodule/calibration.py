"""Malignancy calibration applied at inference: probability = sigmoid(a * logit + b), fitted on validation.

Temperature scaling is the case b = 0 (a = 1 / T). Platt scaling (a and b) is what the trainer fits by default:
the classifier is trained with positives weighted (recall first), which shifts its logits by about
log(pos_weight), a bias a temperature alone cannot remove. Bundles without a calibration get a = 1, b = 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch


@dataclass(frozen=True)
class Calibration:
    method: str = "none"  # "none", "temperature" or "platt"
    a: float = 1.0
    b: float = 0.0

    def __post_init__(self) -> None:
        if self.method not in ("none", "temperature", "platt"):
            raise ValueError(f"unknown calibration method {self.method!r}")
        if not np.isfinite(self.a) or not np.isfinite(self.b) or self.a <= 0:
            raise ValueError(f"calibration needs a finite positive slope and a finite offset: a={self.a}, b={self.b}")

    def probability(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.a * logits.float() + self.b)

    def probability_np(self, logits: npt.ArrayLike) -> npt.NDArray[np.float64]:
        z = self.a * np.asarray(logits, dtype=np.float64) + self.b
        return np.asarray(1.0 / (1.0 + np.exp(-z)), dtype=np.float64)

    def to_metadata(self) -> dict[str, Any]:
        return {"method": self.method, "a": self.a, "b": self.b}

    @classmethod
    def from_metadata(cls, meta: dict[str, Any]) -> Calibration:
        """The bundle's ``malignancy_calibration`` (absent in older bundles: identity)."""
        cal = meta.get("malignancy_calibration")
        if not cal:
            return cls()
        return cls(str(cal["method"]), float(cal["a"]), float(cal["b"]))
