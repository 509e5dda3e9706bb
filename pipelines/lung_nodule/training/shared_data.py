"""The real CT series used as training backgrounds and real-data checks, and where they live by default.

The repository is expected to sit beside `shared/` (as in development and CI); the training and evaluation
commands take `--shared-ct` to point elsewhere. Inference never reads this.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.base import CTVolume
from pipelines.loading import load_series_dir
from pipelines.lung_nodule.training.synthesis import lidc_mark_boxes, voc_lesion_boxes

SHARED_CT = Path(__file__).resolve().parents[4] / "shared" / "data" / "ct"

# The real series used as training backgrounds (every figure measured on one of them says so).
# Their own lesions never become negatives: the Philips adenocarcinoma (VOC boxes) and every reader mark of
# LIDC-IDRI-0002 are kept out of the sampled patches and candidates; the COVID chest has no nodules, so its
# ground glass and consolidation are all hard negatives.
TRAINING_SERIES = ("siemens-chest-99", "philips-chest-64", "lidc-idri-0002", "ricord-chest-255")


def load_training_series(name: str, shared_ct: Path = SHARED_CT) -> tuple[CTVolume, list[tuple[slice, slice, slice]]]:
    """A background series and the source-grid boxes of its own annotated lesions (to keep out)."""
    folder = shared_ct / name
    volume = load_series_dir(folder / "dicom" if (folder / "dicom").is_dir() else folder)
    lesions: list[tuple[slice, slice, slice]] = []
    if (folder / "annotations").is_dir():
        lesions += voc_lesion_boxes(volume, folder / "annotations")
    for xml in sorted(folder.glob("*.xml")):
        lesions += lidc_mark_boxes(volume, xml)
    return volume, lesions
