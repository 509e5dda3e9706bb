"""The two networks (MONAI) and the weights bundle: one .pt with both state dicts and their metadata."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from monai.networks.nets.unet import UNet

from pipelines.lung_nodule import classifiers
from pipelines.lung_nodule.calibration import Calibration
from pipelines.lung_nodule.classifiers import CLASSIFIER_PLANES, DEFAULT_BACKBONE

__all__ = ["CLASSIFIER_PLANES", "DEFAULT_BACKBONE", "Calibration"]

# The segmenter of 0.3.0: 4x the channels of 0.2.0 (8-16-32-64, 1 residual unit, 0.15 M parameters), which
# missed real ground-glass nodules; 1.2 M parameters still segment a chest in ~2 s on 2 CPU threads.
SEGMENTER_CHANNELS = (16, 32, 64, 128)
SEGMENTER_RES_UNITS = 2
# Bundles written before the architecture was stored in their metadata.
LEGACY_SEGMENTER = {"segmenter_channels": [8, 16, 32, 64], "segmenter_res_units": 1}
# Grad-CAM layer of the default backbone: layer2 keeps an 8^3 map on a 32^3 patch (deeper layers are 4^3).
GRADCAM_LAYER = classifiers.gradcam_layer(DEFAULT_BACKBONE)


def build_segmenter(
    channels: tuple[int, ...] = SEGMENTER_CHANNELS, res_units: int = SEGMENTER_RES_UNITS
) -> torch.nn.Module:
    """3D UNet: 1 channel (windowed HU) in, 1 logit per voxel (nodule) out."""
    return UNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=1,
        channels=channels,
        strides=(2,) * (len(channels) - 1),
        num_res_units=res_units,
        # Instance norm: training batches are a handful of patches, where batch statistics are noise and
        # the running averages used at inference disagree with training (probabilities never cleared 0.5).
        norm="instance",
    )


def build_classifier(backbone: str = DEFAULT_BACKBONE) -> torch.nn.Module:
    """The malignancy classifier on a nodule-centred patch (1 logit), by backbone name (classifiers.BACKBONES).

    The default, "resnet10", is a 3D ResNet with one basic block per stage (planes 8-64).
    """
    return classifiers.build_classifier(backbone)


def build_fp_reducer() -> torch.nn.Module:
    """Second stage: the classifier's architecture and input, 1 logit "this candidate is a nodule"."""
    return build_classifier()


@dataclass
class ModelBundle:
    segmenter: torch.nn.Module
    classifier: torch.nn.Module
    metadata: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""
    fp_reducer: torch.nn.Module | None = None  # absent in bundles trained before it existed

    @property
    def classifier_backbone(self) -> str:
        return str(self.metadata.get("classifier_backbone", DEFAULT_BACKBONE))

    @property
    def malignancy_calibration(self) -> Calibration:
        return Calibration.from_metadata(self.metadata)


def save_bundle(
    path: Path,
    segmenter: torch.nn.Module,
    classifier: torch.nn.Module,
    metadata: dict[str, Any],
    fp_reducer: torch.nn.Module | None = None,
) -> str:
    """Write the bundle (half-precision weights keep it small) and return its SHA-256.

    The segmenter's architecture goes into the metadata, read from the network itself, so that
    ``load_bundle`` rebuilds the one that was saved."""
    buffer = io.BytesIO()
    payload: dict[str, Any] = {
        "segmenter": {k: _compact(v) for k, v in segmenter.state_dict().items()},
        "classifier": {k: _compact(v) for k, v in classifier.state_dict().items()},
        "metadata": {**metadata, **segmenter_metadata(segmenter)},
    }
    if fp_reducer is not None:
        payload["fp_reducer"] = {k: _compact(v) for k, v in fp_reducer.state_dict().items()}
    torch.save(payload, buffer)
    data = buffer.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def _compact(t: torch.Tensor) -> torch.Tensor:
    return t.half() if t.is_floating_point() else t


def load_bundle(path: Path, device: torch.device) -> ModelBundle:
    data = path.read_bytes()
    payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    meta = dict(payload["metadata"])
    arch = {**LEGACY_SEGMENTER, **{k: meta[k] for k in LEGACY_SEGMENTER if k in meta}}
    segmenter = _restore(
        build_segmenter(tuple(arch["segmenter_channels"]), int(arch["segmenter_res_units"])),
        payload["segmenter"],
        device,
    )
    # Bundles written before backbones were selectable hold the default one and no "classifier_backbone".
    backbone = str(meta.get("classifier_backbone", DEFAULT_BACKBONE))
    classifier = _restore(build_classifier(backbone), payload["classifier"], device)
    fp_reducer = _restore(build_fp_reducer(), payload["fp_reducer"], device) if "fp_reducer" in payload else None
    return ModelBundle(segmenter, classifier, meta, hashlib.sha256(data).hexdigest(), fp_reducer=fp_reducer)


def segmenter_metadata(segmenter: torch.nn.Module) -> dict[str, Any]:
    """What ``load_bundle`` needs to rebuild ``segmenter`` (a MONAI UNet; stored in every bundle)."""
    assert isinstance(segmenter, UNet)
    return {"segmenter_channels": list(segmenter.channels), "segmenter_res_units": int(segmenter.num_res_units)}


def _restore(model: torch.nn.Module, state: dict[str, torch.Tensor], device: torch.device) -> torch.nn.Module:
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return model.to(device).eval()


def select_device(requested: str | None = None) -> torch.device:
    """``requested`` ("cpu", "cuda", "cuda:1") or CUDA when present, else CPU."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
