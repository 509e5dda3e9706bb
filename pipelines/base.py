"""The contract between the node and its AI pipelines.

A pipeline takes a :class:`CTVolume` (Hounsfield units plus geometry and the
identity of each source slice) and returns a :class:`PipelineResult`: either a
list of :class:`Finding` objects or a "not applicable" verdict with a reason.

Nothing here knows about DICOM networking, the index or torch, so ``node/`` can
import this module cheaply and pipelines can be tested without a node. A pipeline
declares what it produces (:class:`Output`) and which options it takes
(:class:`PipelineSpec`); the node builds it through ``pipelines.registry``.

Array axis order everywhere is (slice, row, column) = (z, y, x) on the *source
slice grid*: slice ``k`` of the volume is the k-th source image when the images
are sorted along the slice normal.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict

NOT_FOR_DIAGNOSTIC_USE = "NOT FOR DIAGNOSTIC USE"

Vector3 = tuple[float, float, float]


@dataclass(frozen=True)
class VolumeGeometry:
    """Where the voxels of a volume sit in patient coordinates (DICOM LPS, mm).

    ``origin_mm`` is ImagePositionPatient of slice 0 (centre of voxel [0, 0, 0]).
    ``row_direction`` / ``column_direction`` are the two halves of
    ImageOrientationPatient: moving one *column* (x index) moves along
    ``row_direction``; moving one *row* (y index) moves along ``column_direction``.
    ``slice_direction`` is the unit vector of increasing slice index (z).
    ``spacing_mm`` is (between slices, between rows, between columns).
    """

    spacing_mm: Vector3
    origin_mm: Vector3
    row_direction: Vector3
    column_direction: Vector3
    slice_direction: Vector3

    def __post_init__(self) -> None:
        if any(not np.isfinite(s) or s <= 0 for s in self.spacing_mm):
            raise ValueError(f"spacing must be positive and finite, got {self.spacing_mm}")
        for name in ("row_direction", "column_direction", "slice_direction"):
            norm = float(np.linalg.norm(getattr(self, name)))
            if abs(norm - 1.0) > 1e-3:
                raise ValueError(f"{name} must be a unit vector, has norm {norm:.4f}")

    def affine(self) -> npt.NDArray[np.float64]:
        """4x4 matrix mapping (z, y, x, 1) voxel indices to (x, y, z, 1) patient mm."""
        m = np.eye(4)
        dz, dy, dx = self.spacing_mm
        m[:3, 0] = np.asarray(self.slice_direction) * dz
        m[:3, 1] = np.asarray(self.column_direction) * dy
        m[:3, 2] = np.asarray(self.row_direction) * dx
        m[:3, 3] = self.origin_mm
        return m

    def voxel_to_patient(self, zyx: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Voxel index/indices (..., 3) in (z, y, x) order to patient mm (..., 3)."""
        pts = np.asarray(zyx, dtype=np.float64)
        result: npt.NDArray[np.float64] = pts @ self.affine()[:3, :3].T + self.affine()[:3, 3]
        return result

    def patient_to_voxel(self, xyz: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Patient mm (..., 3) to fractional voxel indices (..., 3) in (z, y, x) order."""
        pts = np.asarray(xyz, dtype=np.float64)
        inv = np.linalg.inv(self.affine())
        result: npt.NDArray[np.float64] = pts @ inv[:3, :3].T + inv[:3, 3]
        return result


@dataclass(frozen=True)
class SourceSlice:
    """The DICOM image that one slice of the volume came from."""

    sop_instance_uid: str
    sop_class_uid: str
    # 1-based frame number for multi-frame sources (Enhanced CT); None for single-frame images.
    frame_number: int | None = None


@dataclass(frozen=True)
class SeriesInfo:
    """The few header facts a pipeline needs to decide whether it applies."""

    modality: str
    series_instance_uid: str = ""
    image_type: tuple[str, ...] = ()
    body_part_examined: str = ""
    series_description: str = ""
    slice_thickness_mm: float | None = None


@dataclass(frozen=True)
class CTVolume:
    """A CT series as one 3D array in Hounsfield units on the source slice grid."""

    hu: npt.NDArray[np.float32]  # (z, y, x)
    geometry: VolumeGeometry
    slices: tuple[SourceSlice, ...]  # one per z index
    info: SeriesInfo

    def __post_init__(self) -> None:
        if self.hu.ndim != 3:
            raise ValueError(f"volume must be 3D (z, y, x), got shape {self.hu.shape}")
        if len(self.slices) != self.hu.shape[0]:
            raise ValueError(f"{len(self.slices)} source slices for a volume of {self.hu.shape[0]} slices")

    @property
    def shape(self) -> tuple[int, int, int]:
        z, y, x = self.hu.shape
        return (z, y, x)


class NoduleCategory(enum.StrEnum):
    SOLID = "solid"
    PART_SOLID = "part-solid"
    GROUND_GLASS = "ground-glass"
    CALCIFIED = "calcified"


@dataclass(frozen=True)
class VoxelBox:
    """Half-open box [start, stop) on the source grid, (z, y, x) order."""

    start: tuple[int, int, int]
    stop: tuple[int, int, int]

    def __post_init__(self) -> None:
        if any(a < 0 or b <= a for a, b in zip(self.start, self.stop, strict=True)):
            raise ValueError(f"empty or negative box {self.start}..{self.stop}")

    @property
    def shape(self) -> tuple[int, int, int]:
        z0, y0, x0 = self.start
        z1, y1, x1 = self.stop
        return (z1 - z0, y1 - y0, x1 - x0)

    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop, strict=True))  # type: ignore[return-value]  # zip of 3 gives 3


@dataclass(frozen=True)
class ModelIdentity:
    name: str
    version: str
    weights_sha256: str  # "" for pipelines without learned weights


@dataclass(frozen=True)
class Finding:
    """One nodule.

    The mask and the Grad-CAM map are stored as crops inside ``box`` on the source
    grid (a full-volume array per nodule would cost hundreds of MB); use
    :meth:`full_mask` when a whole-volume array is needed.
    """

    number: int  # 1-based, stable within one result
    centre_mm: Vector3  # patient coordinates (LPS)
    long_axis_mm: float
    short_axis_mm: float
    volume_mm3: float
    box: VoxelBox
    mask: npt.NDArray[np.bool_]  # shape == box.shape
    malignancy_probability: float
    detection_score: float
    gradcam: npt.NDArray[np.float32] | None  # shape == box.shape, values in [0, 1]
    category: NoduleCategory | None = None
    lobe: str | None = None  # e.g. "right upper lobe" when known
    # Optional per-voxel nodule probability in [0, 1] (shape == box.shape); lets node/encode write a
    # FRACTIONAL SEG when asked. Added for the encoder; pipelines that have no map leave it None.
    probability_map: npt.NDArray[np.float32] | None = None

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise ValueError if the arrays disagree with the box (again callable: arrays are mutable)."""
        if self.mask.shape != self.box.shape:
            raise ValueError(f"mask shape {self.mask.shape} != box shape {self.box.shape}")
        if not self.mask.any():
            raise ValueError("the mask is empty")
        if self.gradcam is not None and self.gradcam.shape != self.box.shape:
            raise ValueError(f"Grad-CAM shape {self.gradcam.shape} != box shape {self.box.shape}")
        if self.probability_map is not None and self.probability_map.shape != self.box.shape:
            raise ValueError(f"probability map shape {self.probability_map.shape} != box shape {self.box.shape}")
        if not 0.0 <= self.malignancy_probability <= 1.0:
            raise ValueError(f"malignancy probability {self.malignancy_probability} outside [0, 1]")

    def full_mask(self, volume_shape: tuple[int, int, int]) -> npt.NDArray[np.bool_]:
        if any(b > s for b, s in zip(self.box.stop, volume_shape, strict=True)):
            raise ValueError(f"box {self.box} does not fit a volume of shape {volume_shape}")
        out = np.zeros(volume_shape, dtype=bool)
        out[self.box.slices()] = self.mask
        return out

    def summary(self) -> dict[str, object]:
        """JSON-friendly description without the arrays."""
        return {
            "number": self.number,
            "centre_mm": [round(c, 2) for c in self.centre_mm],
            "long_axis_mm": round(self.long_axis_mm, 2),
            "short_axis_mm": round(self.short_axis_mm, 2),
            "volume_mm3": round(self.volume_mm3, 1),
            "malignancy_probability": round(self.malignancy_probability, 4),
            "detection_score": round(self.detection_score, 4),
            "category": self.category.value if self.category else None,
            "lobe": self.lobe,
            "box": {"start": list(self.box.start), "stop": list(self.box.stop)},
        }


class ResultStatus(enum.StrEnum):
    COMPLETED = "completed"
    NOT_APPLICABLE = "not_applicable"


@dataclass(frozen=True)
class PipelineResult:
    pipeline: str
    status: ResultStatus
    model: ModelIdentity
    findings: tuple[Finding, ...] = ()
    reason: str = ""  # why NOT_APPLICABLE; empty when COMPLETED
    # Free-form numbers a pipeline reports besides findings (e.g. HU statistics).
    measurements: dict[str, float | int | str] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    disclaimer: str = NOT_FOR_DIAGNOSTIC_USE

    def __post_init__(self) -> None:
        if self.status is ResultStatus.NOT_APPLICABLE and not self.reason:
            raise ValueError("a not-applicable result needs a reason")
        if self.status is ResultStatus.NOT_APPLICABLE and self.findings:
            raise ValueError("a not-applicable result cannot carry findings")

    @classmethod
    def not_applicable(cls, pipeline: str, model: ModelIdentity, reason: str) -> PipelineResult:
        return cls(pipeline=pipeline, status=ResultStatus.NOT_APPLICABLE, model=model, reason=reason)

    def summary(self) -> dict[str, object]:
        return {
            "pipeline": self.pipeline,
            "status": self.status.value,
            "reason": self.reason,
            "model": {
                "name": self.model.name,
                "version": self.model.version,
                "weights_sha256": self.model.weights_sha256,
            },
            "findings": [f.summary() for f in self.findings],
            "measurements": dict(self.measurements),
            "timings_s": {k: round(v, 3) for k, v in self.timings_s.items()},
            "disclaimer": self.disclaimer,
        }


class Output(enum.StrEnum):
    """What the node makes of a pipeline's completed result, besides the job summary every result gets.

    A pipeline declares its outputs (``Pipeline.outputs``, and the same set in its registry entry); the node
    chooses its encoders from them, never from the pipeline's name.
    """

    # Nodule findings: node/encode writes a DICOM SEG (one segment per nodule), a TID 1500 SR and one
    # Grad-CAM SC per nodule, and the outbox delivers them to the route's destinations.
    FINDINGS = "findings"


Device = Literal["auto", "cpu", "cuda"]


@dataclass(frozen=True)
class RuntimeOptions:
    """How a pipeline may use the machine (the node's ``workers.device`` and ``workers.torch_threads``).

    Given to the pipeline when it is built (``pipelines.registry.load_pipeline``), never through the
    environment. Pipelines without a model ignore them.
    """

    device: Device = "auto"  # auto: CUDA when torch sees a GPU, else CPU; cuda without one is an error
    threads: int = 0  # CPU threads for torch; 0: torch's default

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0, got {self.threads}")


class PipelineOptions(BaseModel):
    """A pipeline's own settings (thresholds...), from the node's ``workers.pipeline_options.<name>``.

    Each pipeline subclasses it with its fields and defaults; a key it does not know is refused.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)


class Pipeline(Protocol):
    """What the node calls. Implementations load their model once, when they are built."""

    name: str
    model: ModelIdentity  # also the identity of a not-applicable result the node makes for it
    outputs: frozenset[Output]  # empty: the job summary only (measurements), nothing encoded

    def run(self, volume: CTVolume) -> PipelineResult: ...


PipelineFactory = Callable[[RuntimeOptions, Any], Pipeline]


@dataclass(frozen=True)
class PipelineSpec:
    """What the node knows of a pipeline before building it; declared where importing costs nothing (no torch).

    ``factory`` names a function ``(RuntimeOptions, <options>) -> Pipeline`` as ``"module:function"``; its
    module is imported only when a worker (or ``ainode analyze``) builds the pipeline.
    """

    name: str
    factory: str
    outputs: frozenset[Output]
    options: type[PipelineOptions] = PipelineOptions

    def __post_init__(self) -> None:
        module, _, function = self.factory.partition(":")
        if not module or not function:
            raise ValueError(f"factory of {self.name!r} must be 'module:function', got {self.factory!r}")


class NotApplicable(Exception):
    """Raised by loading or a pipeline when a series is outside what it handles.

    The runner turns it into ``PipelineResult.not_applicable(reason)``; it is an
    answer about the input, not a crash.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
