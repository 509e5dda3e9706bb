"""Grad-CAM Secondary Capture: per nodule its key slice in lung window, heat map blended, text burned in.

The image carries no patient data in its pixels: only the nodule number, the probability, the model and
the disclaimer. BurnedInAnnotation is YES because of that text, and SourceImageSequence names the slice.
"""

from __future__ import annotations

import highdicom as hd
import matplotlib
import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian
from skimage.segmentation import find_boundaries

from node.encode import common
from node.encode.common import CheckedInput
from pipelines.base import CTVolume, Finding, PipelineResult

LUNG_WINDOW_CENTRE_HU = -600.0
LUNG_WINDOW_WIDTH_HU = 1500.0
HEATMAP_MAX_ALPHA = 0.45  # opacity of the hottest Grad-CAM pixel over the CT
HEATMAP_COLORMAP = "jet"
OUTLINE_RGB = (0, 255, 0)  # nodule mask outline
TEXT_RGB = (255, 255, 0)
TEXT_SHADOW_RGB = (0, 0, 0)
FONT_SIZE_FRACTION = 1 / 28  # of the image height
TEXT_MARGIN_PX = 6

# Patient-orientation letters of the + direction of each LPS axis and of its opposite.
_AXIS_LETTERS = (("L", "R"), ("P", "A"), ("H", "F"))
# Components smaller than this do not contribute a letter to an oblique direction.
_ORIENTATION_EPSILON = 1e-3


def orientation_letters(direction: tuple[float, float, float]) -> str:
    """PatientOrientation value: letters of the direction's components, largest first (PS3.3 C.7.6.1.1.1)."""
    order = np.argsort(-np.abs(np.asarray(direction)))
    letters = ""
    for axis in order:
        component = direction[axis]
        if abs(component) > _ORIENTATION_EPSILON:
            letters += _AXIS_LETTERS[axis][0 if component > 0 else 1]
    return letters


def lung_window(hu: npt.NDArray[np.floating]) -> npt.NDArray[np.uint8]:
    low = LUNG_WINDOW_CENTRE_HU - LUNG_WINDOW_WIDTH_HU / 2
    scaled = (hu.astype(np.float32) - low) / LUNG_WINDOW_WIDTH_HU
    return np.asarray(np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5, dtype=np.uint8)


def render(volume: CTVolume, finding: Finding, z: int, result: PipelineResult) -> npt.NDArray[np.uint8]:
    """RGB (rows, columns, 3) image of slice ``z`` with the finding's Grad-CAM, outline and text."""
    grey = lung_window(volume.hu[z])
    rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
    (z0, y0, x0), (_, y1, x1) = finding.box.start, finding.box.stop
    if finding.gradcam is not None:
        heat = np.zeros(grey.shape, dtype=np.float32)
        heat[y0:y1, x0:x1] = np.clip(finding.gradcam[z - z0], 0.0, 1.0)
        colours = matplotlib.colormaps[HEATMAP_COLORMAP](heat)[..., :3] * 255.0
        alpha = (heat * HEATMAP_MAX_ALPHA)[..., None]
        rgb = rgb * (1.0 - alpha) + colours * alpha
    mask = np.zeros(grey.shape, dtype=bool)
    mask[y0:y1, x0:x1] = finding.mask[z - z0]
    outline = find_boundaries(mask, mode="outer")  # type: ignore[no-untyped-call]  # skimage has no stubs
    rgb[outline] = OUTLINE_RGB
    image = Image.fromarray(np.clip(rgb + 0.5, 0, 255).astype(np.uint8), mode="RGB")
    _burn_text(image, finding, result)
    return np.asarray(image, dtype=np.uint8)


def _burn_text(image: Image.Image, finding: Finding, result: PipelineResult) -> None:
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=max(10, round(image.height * FONT_SIZE_FRACTION)))
    lines_top = [
        f"Nodule {finding.number}   P(malignant) = {finding.malignancy_probability:.2f}",
        f"Grad-CAM  {result.model.name} {result.model.version}",
    ]
    lines_bottom = [result.disclaimer]
    line_height = int(font.size) + 4 if isinstance(font, ImageFont.FreeTypeFont) else 14
    for i, text in enumerate(lines_top):
        _shadowed_text(draw, (TEXT_MARGIN_PX, TEXT_MARGIN_PX + i * line_height), text, font)
    for i, text in enumerate(reversed(lines_bottom)):
        y = image.height - TEXT_MARGIN_PX - (i + 1) * line_height
        _shadowed_text(draw, (TEXT_MARGIN_PX, y), text, font)


def _shadowed_text(
    draw: ImageDraw.ImageDraw,
    xy: tuple[int, int],
    text: str,
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
) -> None:
    x, y = xy
    draw.text((x + 1, y + 1), text, fill=TEXT_SHADOW_RGB, font=font)
    draw.text((x, y), text, fill=TEXT_RGB, font=font)


def encode_sc(
    result: PipelineResult,
    volume: CTVolume,
    checked: CheckedInput,
    finding: Finding,
    *,
    instance_number: int,
    uid_seed: str,
    series_number: int,
    superseding: bool = False,
) -> hd.sc.SCImage:
    z = common.key_slice(finding)
    source = checked.ordered_sources[z]
    geometry = volume.geometry
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=render(volume, finding, z, result),
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=common.derive_uid(uid_seed, "sc-series"),
        series_number=series_number,
        sop_instance_uid=common.derive_uid(uid_seed, "sc-instance", str(finding.number)),
        instance_number=instance_number,
        manufacturer=common.NODE_MANUFACTURER,
        patient_orientation=(
            orientation_letters(geometry.row_direction),
            orientation_letters(geometry.column_direction),
        ),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        contributing_equipment=common.equipment(result),
        series_description=common.series_description("Grad-CAM", supersedes=superseding),
        manufacturer_model_name=common.model_name(result),
        software_versions=common.software_versions(result)[0],
        device_serial_number=common.NODE_DEVICE_SERIAL_NUMBER,
    )
    sc.BurnedInAnnotation = "YES"
    # General Series Laterality is Type 2C (paired body parts); a chest is not paired, so copy the
    # source's value or leave it empty, as dciodvfy expects the element to be present.
    sc.Laterality = source.get("Laterality", "")
    sc.DerivationDescription = (
        f"Grad-CAM of nodule {finding.number} over lung window "
        f"(C {LUNG_WINDOW_CENTRE_HU:g} / W {LUNG_WINDOW_WIDTH_HU:g}); {result.disclaimer}"
    )
    sc.ImageComments = f"Nodule {finding.number}. {result.disclaimer}"
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    frames = checked.referenced_frames(z)
    if frames is not None:  # the key slice is one frame of a multi-frame source
        item.ReferencedFrameNumber = frames[0]
    sc.SourceImageSequence = DicomSequence([item])
    common.finish_header(sc, source, result)
    return sc
