"""LungNodulePipeline: CT volume in, nodule findings out (the node's worker and `ainode analyze` call this).

Steps: applicability checks -> working grid (2 mm) -> lung mask -> 3D UNet (sliding window, batched tiles)
-> connected components -> nodule-centred patches -> false-positive reducer (a 3D ResNet scoring "nodule or
not", when the bundle has one) -> per candidate: mask back on the source grid, measurements, category from
HU, malignancy + Grad-CAM from the malignancy 3D ResNet (candidates batched).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from monai.inferers.utils import sliding_window_inference
from scipy import ndimage
from skimage.feature import peak_local_max
from skimage.segmentation import watershed

from pipelines.base import (
    CTVolume,
    Device,
    Finding,
    ModelIdentity,
    NoduleCategory,
    NotApplicable,
    PipelineResult,
    ResultStatus,
    RuntimeOptions,
    VoxelBox,
)
from pipelines.devices import resolve_device
from pipelines.lung_nodule import config
from pipelines.lung_nodule.classifiers import gradcam_layer
from pipelines.lung_nodule.contract import SPEC, LungNoduleOptions
from pipelines.lung_nodule.gradcam import malignancy_with_gradcam
from pipelines.lung_nodule.measure import largest_slice_axes
from pipelines.lung_nodule.models import ModelBundle, load_bundle
from pipelines.lung_nodule.preprocessing import (
    WorkingGrid,
    bounding_box,
    crop_around,
    lung_mask,
    to_working_grid,
    window,
)


@dataclass(frozen=True)
class _Component:
    """A connected component of the segmentation on the working grid."""

    segmentation_score: float  # mean nodule probability of the segmenter inside the component
    index: int  # its label in the labelled volume
    box: tuple[slice, ...]
    centre_w: npt.NDArray[np.float64]  # working-grid voxel coordinates


@dataclass(frozen=True)
class CandidatePatches:
    """What false-positive-reduction training needs of a volume's candidates."""

    patches: npt.NDArray[np.float32]  # (N, 2, *config.CLS_PATCH)
    centres_mm: list[tuple[float, float, float]]  # patient coordinates
    segmentation_scores: list[float]


class LungNodulePipeline:
    """Loads the weights once; ``run`` is called for every series."""

    name = SPEC.name
    outputs = SPEC.outputs

    def __init__(
        self,
        weights: Path = config.WEIGHTS_PATH,
        device: Device = "auto",
        detection_threshold: float | None = None,
        threads: int | None = None,
    ) -> None:
        if threads:
            torch.set_num_threads(threads)
        torch.set_flush_denormal(True)  # denormal activations make CPU convolutions many times slower
        self.device = resolve_device(device)  # fails here, before loading, when CUDA is asked for and absent
        self.bundle: ModelBundle = load_bundle(weights, self.device)
        meta = self.bundle.metadata
        self.model = ModelIdentity(
            name=str(meta.get("name", config.MODEL_NAME)),
            version=config.MODEL_VERSION,
            weights_sha256=self.bundle.sha256,
        )
        # Operating point chosen for recall on validation data (stored with the weights); overridable.
        self.detection_threshold = float(
            detection_threshold
            if detection_threshold is not None
            else meta.get("detection_threshold", config.DEFAULT_DETECTION_THRESHOLD)
        )

    # --- the contract ----------------------------------------------------------------------------------

    def run(self, volume: CTVolume) -> PipelineResult:
        try:
            findings, measurements, timings = self._analyse(volume, min_score=self.detection_threshold)
        except NotApplicable as exc:
            return PipelineResult.not_applicable(self.name, self.model, exc.reason)
        return PipelineResult(
            pipeline=self.name,
            status=ResultStatus.COMPLETED,
            model=self.model,
            findings=tuple(findings),
            measurements=measurements,
            timings_s=timings,
        )

    def candidates(self, volume: CTVolume) -> list[Finding]:
        """All candidates before the operating point (for FROC curves)."""
        return self._analyse(volume, min_score=float("-inf"))[0]

    # --- steps -----------------------------------------------------------------------------------------

    def candidate_patches(self, volume: CTVolume) -> CandidatePatches:
        """The segmenter's candidates as classifier patches, before any false-positive reduction (training)."""
        check_applicable(volume)
        grid, hu, lungs, probability, _ = self._segment_volume(volume, {})
        components, labels = self._components(grid, lungs, probability)
        patches = self._patches(hu, labels, components)
        centres = []
        for c in components:
            x, y, z = (float(v) for v in volume.geometry.voxel_to_patient(grid.to_source(c.centre_w)))
            centres.append((x, y, z))
        return CandidatePatches(patches, centres, [c.segmentation_score for c in components])

    def _analyse(
        self, volume: CTVolume, min_score: float
    ) -> tuple[list[Finding], dict[str, float | int | str], dict[str, float]]:
        """Findings scoring at least ``min_score`` (the operating point; -inf for all candidates)."""
        timings: dict[str, float] = {}
        check_applicable(volume)
        grid, hu, lungs, probability, lung_ml = self._segment_volume(volume, timings)

        t = time.perf_counter()
        findings, candidates = self._findings(volume, grid, hu, lungs, probability, min_score)
        timings["classify"] = time.perf_counter() - t
        measurements: dict[str, float | int | str] = {
            "lung_volume_ml": round(lung_ml, 1),
            "candidates": candidates,
            "detection_threshold": self.detection_threshold,
            "false_positive_reduction": self.bundle.fp_reducer is not None,
            "device": self.device.type,
        }
        return findings, measurements, timings

    def _segment_volume(
        self, volume: CTVolume, timings: dict[str, float]
    ) -> tuple[WorkingGrid, npt.NDArray[np.float32], npt.NDArray[np.bool_], npt.NDArray[np.float32], float]:
        """Working grid, HU on it, lung mask, nodule probability, aerated lung volume (ml)."""
        t = time.perf_counter()
        grid = WorkingGrid.for_source(volume.shape, volume.geometry.spacing_mm)
        hu = to_working_grid(volume.hu, grid)
        lungs = lung_mask(hu, grid.spacing)
        lung_ml = float(lungs.sum()) * float(np.prod(grid.spacing)) / 1000.0
        timings["preprocess"] = time.perf_counter() - t
        if lung_ml < config.MIN_LUNG_VOLUME_ML:
            raise NotApplicable(f"no lungs in view (aerated lung volume {lung_ml:.0f} ml)")

        t = time.perf_counter()
        margin = int(np.ceil(12.0 / config.WORKING_SPACING_MM))
        box = bounding_box(lungs, margin)
        assert box is not None  # lung_ml > 0
        crop = tuple(slice(a, b) for a, b in zip(*box, strict=True))
        probability = np.zeros(hu.shape, dtype=np.float32)
        probability[crop] = self._segment(window(hu[crop]))
        timings["segment"] = time.perf_counter() - t
        return grid, hu, lungs, probability, lung_ml

    def _segment(self, image: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        x = torch.from_numpy(image)[None, None].to(self.device)
        with torch.no_grad(), _autocast(self.device):
            logits = sliding_window_inference(
                x, roi_size=config.SEG_ROI, sw_batch_size=2, predictor=self.bundle.segmenter, overlap=0.25
            )
        assert isinstance(logits, torch.Tensor)
        return torch.sigmoid(logits.float())[0, 0].cpu().numpy()

    def _components(
        self, grid: WorkingGrid, lungs: npt.NDArray[np.bool_], probability: npt.NDArray[np.float32]
    ) -> tuple[list[_Component], npt.NDArray[np.int32]]:
        """Connected components of the segmentation that could be nodules, highest probability first.

        A sparse component (a nodule touching a vessel tree, or a vessel tree alone) is split at its
        narrow points first, so that the nodule becomes a candidate of its own instead of the whole tree
        being dropped as too long.
        """
        labels, n = ndimage.label(probability > config.OUTLINE_THRESHOLD)
        if n == 0:
            return [], labels
        peak = ndimage.maximum(probability, labels, index=np.arange(1, n + 1))
        near_lung = ndimage.binary_dilation(lungs, iterations=2)
        voxel_mm3 = float(np.prod(grid.spacing))
        components = []
        pieces: list[tuple[int, tuple[slice, ...]]] = []  # (label, box) of each candidate
        for index, sl in enumerate(ndimage.find_objects(labels), start=1):
            if sl is None:
                continue
            if peak[index - 1] <= config.SEGMENTATION_THRESHOLD:
                continue  # no confident voxel (hysteresis)
            comp = labels[sl] == index
            if comp.sum() * voxel_mm3 < config.MIN_CANDIDATE_VOLUME_MM3 or not (near_lung[sl] & comp).any():
                continue  # too small to measure, or outside the lungs (false-positive reduction)
            pieces.extend(split_sparse_component(labels, sl, index, grid.spacing))
        for index, sl in pieces:
            comp = labels[sl] == index
            if comp.sum() * voxel_mm3 < config.MIN_CANDIDATE_VOLUME_MM3:
                continue
            extent_mm = max((s.stop - s.start) * d for s, d in zip(sl, grid.spacing, strict=True))
            if extent_mm > config.MAX_CANDIDATE_EXTENT_MM:
                continue  # longer than any lung mass: vessels, airway walls, the heart border
            # Mean, not peak, probability: on held-out composite scans it ranks nodules above vessel
            # fragments better (CPM 0.165 vs 0.090 with the peak, all else equal); a vessel often has one
            # confident voxel.
            score = float(probability[sl][comp].mean())
            centre = np.argwhere(comp).mean(axis=0) + [s.start for s in sl]
            components.append(_Component(score, index, sl, centre))
        components.sort(key=lambda c: -c.segmentation_score)
        return components, labels

    @staticmethod
    def _patches(
        hu: npt.NDArray[np.float32], labels: npt.NDArray[np.int32], components: list[_Component]
    ) -> npt.NDArray[np.float32]:
        """Nodule-centred 2-channel patches (windowed HU, the component's mask), one per component."""
        half = np.array(config.CLS_PATCH) // 2
        windowed = window(hu)
        patches = [
            np.stack(
                [
                    crop_around(windowed, np.round(c.centre_w).astype(int), half, 0.0),
                    (crop_around(labels, np.round(c.centre_w).astype(int), half, 0.0) == c.index).astype(np.float32),
                ]
            )
            for c in components
        ]
        return np.stack(patches) if patches else np.zeros((0, 2, *config.CLS_PATCH), dtype=np.float32)

    def _findings(
        self,
        volume: CTVolume,
        grid: WorkingGrid,
        hu: npt.NDArray[np.float32],
        lungs: npt.NDArray[np.bool_],
        probability: npt.NDArray[np.float32],
        min_score: float,
    ) -> tuple[list[Finding], int]:
        """Findings scoring at least ``min_score``, best first, and how many candidates were scored."""
        components, labels = self._components(grid, lungs, probability)
        if not components:
            return [], 0
        patches = torch.from_numpy(self._patches(hu, labels, components)).to(self.device)
        # The detection score: the false-positive reducer's nodule probability when the bundle has one
        # (second stage, as in LUNA16 systems), else the segmenter's mean probability over the component.
        scores = [c.segmentation_score for c in components]
        if self.bundle.fp_reducer is not None:
            with torch.no_grad(), _autocast(self.device):
                scores = torch.sigmoid(self.bundle.fp_reducer(patches).float())[:, 0].cpu().tolist()
        # Only what passes the operating point gets measured, malignancy and Grad-CAM (one batch).
        scored = len(components)
        keep = [i for i, score in enumerate(scores) if score >= min_score]
        if not keep:
            return [], scored
        components, scores = [components[i] for i in keep], [scores[i] for i in keep]
        # Malignancy only for what passed the detector: an opacity the reducer rejects gets no malignancy.
        probs, cams = malignancy_with_gradcam(
            self.bundle.classifier,
            patches[keep],
            target_layer=gradcam_layer(self.bundle.classifier_backbone),
            calibration=self.bundle.malignancy_calibration,
        )
        half = np.array(config.CLS_PATCH) // 2
        findings: list[Finding] = []
        for c, score, prob, cam in zip(components, scores, probs, cams, strict=True):
            finding = self._to_source(
                volume, grid, probability, labels == c.index, c.box, c.centre_w, float(score), prob, cam, half
            )
            if finding is not None:
                findings.append(finding)
        findings.sort(key=lambda f: -f.detection_score)
        numbered = [
            Finding(**{**f.__dict__, "number": i})
            for i, f in enumerate(findings, start=1)  # numbered by detection score, after drops
        ]
        return numbered, scored

    def _to_source(
        self,
        volume: CTVolume,
        grid: WorkingGrid,
        probability: npt.NDArray[np.float32],
        component: npt.NDArray[np.bool_],
        sl: tuple[slice, ...],
        centre_w: npt.NDArray[np.float64],
        score: float,
        malignancy: float,
        cam: npt.NDArray[np.float32],
        half: npt.NDArray[np.int64],
    ) -> Finding | None:
        """Resample the candidate's probability and Grad-CAM onto its box on the source grid."""
        start_w = np.array([s.start for s in sl]) - 1
        stop_w = np.array([s.stop for s in sl]) + 1
        start = np.maximum(0, np.floor(grid.to_source(start_w)).astype(int))
        stop = np.minimum(volume.shape, np.ceil(grid.to_source(stop_w)).astype(int) + 1)
        zz, yy, xx = np.meshgrid(*(np.arange(a, b) for a, b in zip(start, stop, strict=True)), indexing="ij")
        src = np.stack([zz, yy, xx], axis=-1).astype(np.float32)
        working = grid.to_working(src)
        # Only the component's own neighbourhood of the working grid: whole-volume copies per candidate
        # made a 300-slice series with many candidates take 7 GiB.
        lo = np.maximum(0, start_w - 1)
        hi = np.minimum(probability.shape, stop_w + 2)
        crop = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
        near = ndimage.binary_dilation(component[crop], iterations=1)
        comp_prob = np.where(near, probability[crop], 0.0).astype(np.float32)
        p = ndimage.map_coordinates(comp_prob, (working - lo).reshape(-1, 3).T, order=1, mode="constant", cval=0.0)
        mask = p.reshape(zz.shape) > config.OUTLINE_THRESHOLD
        if not mask.any():
            # Interpolation thinned the component below the threshold everywhere on the source grid:
            # outline it at working-grid resolution instead (nearest working voxel).
            nearest = ndimage.map_coordinates(
                component[crop].astype(np.float32), (working - lo).reshape(-1, 3).T, order=0, mode="constant"
            )
            mask = nearest.reshape(zz.shape) > 0.5
        if not mask.any():
            return None
        spacing = volume.geometry.spacing_mm
        long_axis, short_axis = largest_slice_axes(mask, spacing)
        if long_axis < config.MIN_LONG_AXIS_MM:
            return None  # below the smallest nodule readers outline (config.MIN_LONG_AXIS_MM)
        cam_coords = (working - (np.round(centre_w) - half)).reshape(-1, 3).T
        cam_src = ndimage.map_coordinates(cam, cam_coords, order=1, mode="nearest").reshape(zz.shape)
        box = VoxelBox(tuple(int(v) for v in start), tuple(int(v) for v in stop))  # type: ignore[arg-type]
        idx = np.argwhere(mask).mean(axis=0) + start
        hu_in = volume.hu[box.slices()][mask]
        return Finding(
            number=0,
            centre_mm=tuple(float(v) for v in volume.geometry.voxel_to_patient(idx)),  # type: ignore[arg-type]
            long_axis_mm=long_axis,
            short_axis_mm=short_axis,
            volume_mm3=float(mask.sum()) * float(np.prod(spacing)),
            box=box,
            mask=mask,
            malignancy_probability=float(np.clip(malignancy, 0.0, 1.0)),
            detection_score=score,
            gradcam=np.clip(cam_src, 0.0, 1.0).astype(np.float32),
            category=categorise(hu_in),
        )


def build(runtime: RuntimeOptions, options: LungNoduleOptions) -> LungNodulePipeline:
    """The registry's factory: the shipped weights, on the node's device and threads, with its options."""
    return LungNodulePipeline(
        device=runtime.device, threads=runtime.threads or None, detection_threshold=options.detection_threshold
    )


def split_sparse_component(
    labels: npt.NDArray[np.int32], sl: tuple[slice, ...], index: int, spacing: tuple[float, float, float]
) -> list[tuple[int, tuple[slice, ...]]]:
    """Component ``index`` (inside box ``sl``), split at its narrow points when it is long and sparse.

    A nodule touching vessels merges with them into one long, sparse component; a compact mass does not.
    Watershed on the distance to the component's surface, seeded at its thick points (local maxima of at
    least config.SPLIT_MIN_RADIUS_MM): each thick point keeps the voxels closest to it. Pieces get new labels
    above the highest one in ``labels`` (written in place). Returns (label, box in volume coordinates) of
    every piece, the component itself when it is not split.
    """
    comp = labels[sl] == index
    extent_mm = max((s.stop - s.start) * d for s, d in zip(sl, spacing, strict=True))
    fill = float(comp.sum()) / float(comp.size)
    unsplit = [(index, sl)]
    if extent_mm <= config.SPLIT_MIN_EXTENT_MM or (
        fill >= config.SPLIT_MAX_FILL and extent_mm <= config.MAX_CANDIDATE_EXTENT_MM
    ):
        return unsplit
    distance = ndimage.distance_transform_edt(comp, sampling=spacing)
    peaks = peak_local_max(  # type: ignore[no-untyped-call]  # skimage is untyped
        distance,
        min_distance=max(1, round(config.SPLIT_MIN_RADIUS_MM / min(spacing))),
        threshold_abs=config.SPLIT_MIN_RADIUS_MM,
        labels=comp.astype(np.int32),
        exclude_border=False,
    )
    if len(peaks) < 2:
        return unsplit
    markers = np.zeros(comp.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    split = watershed(-distance, markers, mask=comp)  # type: ignore[no-untyped-call]  # skimage is untyped
    first = int(labels.max()) + 1
    region = labels[sl]
    region[comp] = first + split[comp] - 1
    out = []
    for k, box in enumerate(ndimage.find_objects(split), start=0):
        if box is not None:
            out.append(
                (first + k, tuple(slice(b.start + o.start, b.stop + o.start) for b, o in zip(box, sl, strict=True)))
            )
    return out


def categorise(hu: npt.NDArray[np.float32]) -> NoduleCategory | None:
    """Category from the HU inside the mask (a rule, not a learned output; see MODEL_CARD.md)."""
    if hu.size == 0:
        return None
    if float(np.mean(hu > 200.0)) >= 0.10:
        return NoduleCategory.CALCIFIED
    solid = float(np.mean(hu > -300.0))
    if solid < 0.2:
        return NoduleCategory.GROUND_GLASS
    if solid < 0.7:
        return NoduleCategory.PART_SOLID
    return NoduleCategory.SOLID


def check_applicable(volume: CTVolume) -> None:
    info = volume.info
    if info.modality != "CT":
        raise NotApplicable(f"modality is {info.modality or 'missing'}, not CT")
    if any(t.upper() == "LOCALIZER" for t in info.image_type):
        raise NotApplicable("the series is a localizer (scout), not a cross-sectional CT")
    n = volume.shape[0]
    extent = (n - 1) * volume.geometry.spacing_mm[0]
    if n < config.MIN_SLICES or extent < config.MIN_Z_EXTENT_MM:
        raise NotApplicable(
            f"too few slices: {n} slices covering {extent:.0f} mm "
            f"(needs >= {config.MIN_SLICES} slices and >= {config.MIN_Z_EXTENT_MM:.0f} mm)"
        )
    thickness = max(volume.geometry.spacing_mm[0], info.slice_thickness_mm or 0.0)
    if thickness > config.MAX_SLICE_SPACING_MM:
        raise NotApplicable(f"slices too thick: {thickness:.1f} mm (at most {config.MAX_SLICE_SPACING_MM:.0f} mm)")


@contextmanager
def _autocast(device: torch.device) -> Iterator[None]:
    """Mixed precision on CUDA only; CPU stays float32 (bf16 autocast on CPU is slower and less exact)."""
    if device.type == "cuda":
        with torch.autocast(device_type="cuda", dtype=torch.float16):
            yield
    else:
        yield
