"""Constants shared by training, inference and evaluation: one place for each default."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
WEIGHTS_PATH = PACKAGE_DIR / "weights" / "lung_nodule.pt"

MODEL_NAME = "ainode-lung-nodule"
# The pipeline's version: bumped when post-processing changes results, even with the same weights
# (which results identify by their SHA-256). 0.2.0: mean-probability score, 3 mm floor, thin-component outline.
# 0.3.0: a 4x wider segmenter trained on four real backgrounds with hard negatives; vessel-touching
# candidates split; reducer retrained on the new candidates.
MODEL_VERSION = "0.3.0"

# The networks see the CT resampled to this isotropic spacing. 2 mm keeps a whole chest under ~2 M voxels
# (CPU budget) and still resolves nodules from ~4 mm diameter.
WORKING_SPACING_MM = 2.0
# HU window fed to both networks (lung + soft tissue + calcium), scaled to [0, 1].
HU_WINDOW = (-1000.0, 400.0)
# Segmentation patches (training) and sliding-window tiles (inference), in working voxels.
SEG_PATCH = (48, 48, 48)
SEG_ROI = (96, 96, 96)
# Classifier patches centred on a nodule, in working voxels (64 mm cube).
CLS_PATCH = (32, 32, 32)

# Applicability limits.
MIN_SLICES = 16
MIN_Z_EXTENT_MM = 80.0
MAX_SLICE_SPACING_MM = 5.01  # 5 mm reconstructions are the thickest we accept (and train for)
MIN_LUNG_VOLUME_ML = 200.0

# Candidate generation.
SEGMENTATION_THRESHOLD = 0.5
# Hysteresis: a candidate is a region of probability > OUTLINE_THRESHOLD holding at least one voxel above
# SEGMENTATION_THRESHOLD, outlined at OUTLINE_THRESHOLD. Faint ground glass gets only a few confident voxels
# (LIDC-IDRI-0002's nodule: 3 voxels above 0.5, a 10 mm region above 0.3); the reducer judges the rest.
OUTLINE_THRESHOLD = 0.3
MIN_CANDIDATE_VOLUME_MM3 = 20.0  # ~3.4 mm sphere
# Findings whose outline on the source slices is shorter than this are dropped. LIDC readers outlined
# nodules from 3 mm (smaller ones were only marked as points), so the data the model imitates has nothing
# smaller. Held-out composite evaluation: 2.5 fewer false positives per scan, no nodule lost (MODEL_CARD.md).
MIN_LONG_AXIS_MM = 3.0
# Longer than the largest lung masses (the Philips adenocarcinoma is ~70 mm): such components are vessels,
# airway walls or the heart border, and their per-candidate work dominated the run time.
MAX_CANDIDATE_EXTENT_MM = 100.0
# Splitting merged candidates: a component longer than SPLIT_MIN_EXTENT_MM that fills less than
# SPLIT_MAX_FILL of its bounding box (a vessel tree, or a nodule touching one), or any component longer than
# MAX_CANDIDATE_EXTENT_MM, is cut by watershed at its narrow points, seeded at points at least
# SPLIT_MIN_RADIUS_MM from its surface (a 6 mm nodule's centre; vessels are thinner).
SPLIT_MIN_EXTENT_MM = 24.0
SPLIT_MAX_FILL = 0.25
SPLIT_MIN_RADIUS_MM = 3.0
# Default operating points; the trained bundle stores the ones chosen on validation (recall first).
DEFAULT_DETECTION_THRESHOLD = 0.5
DEFAULT_MALIGNANCY_THRESHOLD = 0.5
