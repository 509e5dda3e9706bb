"""Grad-CAM (torchcam) on the malignancy classifier, for a batch of nodule patches."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch
from torchcam.methods import GradCAM

from pipelines.lung_nodule.calibration import Calibration
from pipelines.lung_nodule.models import GRADCAM_LAYER


def malignancy_with_gradcam(
    classifier: torch.nn.Module,
    patches: torch.Tensor,
    target_layer: str = GRADCAM_LAYER,
    calibration: Calibration | None = None,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Malignancy probabilities (N,) and Grad-CAM maps (N, *patch) in [0, 1], upsampled to the patch size.

    ``target_layer``: the backbone's (classifiers.gradcam_layer); ``calibration``: the bundle's (probabilities
    are sigmoid(a * logit + b); Grad-CAM reads the raw logit, whose ranking calibration does not change).
    Runs in float32 with gradients (Grad-CAM needs them) even when the caller is under no_grad/autocast.
    """
    calibration = calibration or Calibration()
    with torch.enable_grad(), torch.autocast(device_type=patches.device.type, enabled=False):
        extractor = GradCAM(classifier, target_layer=target_layer)
        try:
            logits = classifier(patches.float())
            maps = extractor(class_idx=0, scores=logits)[0]  # (N, d, h, w) for the single logit
        finally:
            extractor.remove_hooks()
        probs = calibration.probability(logits[:, 0]).detach()
    if maps.ndim == 3:  # torchcam squeezes a batch of one
        maps = maps[None]
    up = torch.nn.functional.interpolate(
        maps[:, None].float(), size=tuple(patches.shape[2:]), mode="trilinear", align_corners=False
    )[:, 0]
    lo = up.flatten(1).min(dim=1).values.view(-1, 1, 1, 1)
    hi = up.flatten(1).max(dim=1).values.view(-1, 1, 1, 1)
    cams = ((up - lo) / (hi - lo).clamp_min(1e-6)).detach()
    return probs.cpu().numpy().astype(np.float32), cams.cpu().numpy().astype(np.float32)
