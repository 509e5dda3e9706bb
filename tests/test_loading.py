"""load_series: ordering, HU conversion, padding, geometry, tilt, refusals, multi-frame and compression."""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, RLELossless

from demo.ct_factory import numbered_phantom, prepare_for_highdicom_legacy, write_series
from demo.paths import PHILIPS_CT as PHILIPS
from demo.paths import SIEMENS_CT as SIEMENS
from pipelines.base import NotApplicable
from pipelines.loading import load_series, load_series_dir

pytestmark = pytest.mark.unit


@pytest.mark.needs("siemens-ct", "philips-ct")
@pytest.mark.parametrize(("folder", "n_slices", "thickness"), [(SIEMENS, 99, 3.0), (PHILIPS, 64, 5.0)])
def test_real_series_load_sorted_along_normal(folder: Path, n_slices: int, thickness: float) -> None:
    volume = load_series_dir(folder)
    assert volume.shape == (n_slices, 512, 512)
    assert volume.geometry.spacing_mm[0] == pytest.approx(thickness, abs=0.01)
    assert volume.hu.dtype == np.float32
    # Air and soft tissue are where CT puts them.
    assert volume.hu.min() >= -1025 and np.median(volume.hu) < 0
    # Each z index is the slice whose ImagePositionPatient the geometry predicts.
    by_uid = {}
    for path in sorted(folder.iterdir()):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        by_uid[str(ds.SOPInstanceUID)] = [float(v) for v in ds.ImagePositionPatient]
    for k in (0, n_slices // 2, n_slices - 1):
        expected = volume.geometry.voxel_to_patient([k, 0, 0])
        assert np.allclose(by_uid[volume.slices[k].sop_instance_uid], expected, atol=0.01)


def test_order_follows_position_not_instance_number(tmp_path: Path) -> None:
    hu = numbered_phantom(8)
    rng = np.random.default_rng(0)
    numbers = rng.permutation(8) + 1
    paths = write_series(tmp_path, hu, instance_numbers=[int(n) for n in numbers])
    volume = load_series(list(reversed(paths)))
    assert [float(volume.hu[k, 20, 20]) for k in range(8)] == [10.0 * k for k in range(8)]


def test_descending_positions_still_give_increasing_slice_index(tmp_path: Path) -> None:
    hu = numbered_phantom(6)
    origin = np.array([-100.0, -120.0, 50.0])
    positions = [origin - np.array([0, 0, 2.0 * k]) for k in range(6)]  # slice k goes *down*
    write_series(tmp_path, hu, positions=positions)
    volume = load_series_dir(tmp_path)
    # The lowest slice (written last, value 50) comes first; the slice direction is +z.
    assert float(volume.hu[0, 20, 20]) == 50.0
    assert volume.geometry.slice_direction == pytest.approx((0.0, 0.0, 1.0))
    assert volume.geometry.origin_mm[2] == pytest.approx(40.0)


def test_rescale_slope_and_intercept(tmp_path: Path) -> None:
    hu = numbered_phantom(4) - 900
    write_series(tmp_path, hu.astype(np.int16), slope=2.0, intercept=-2048.0)
    volume = load_series_dir(tmp_path)
    assert np.array_equal(volume.hu, hu.astype(np.float32))


def test_pixel_padding_becomes_air(tmp_path: Path) -> None:
    hu = numbered_phantom(4) + 40
    padded = np.zeros(hu.shape[1:], dtype=bool)
    padded[:, :3] = True
    write_series(tmp_path, hu.astype(np.int16), padding_value=-2000, padded_pixels=padded)
    volume = load_series_dir(tmp_path)
    assert np.all(volume.hu[:, padded] == -1024.0)
    assert np.all(volume.hu[:, ~padded] >= 40.0)


def test_oblique_orientation_keeps_direction_cosines(tmp_path: Path) -> None:
    angle = math.radians(30)
    row = (math.cos(angle), math.sin(angle), 0.0)
    col = (0.0, 0.0, -1.0)  # coronal-ish, rotated about z
    paths = write_series(tmp_path, numbered_phantom(5), row_direction=row, column_direction=col)
    volume = load_series(paths)
    geo = volume.geometry
    assert geo.row_direction == pytest.approx(row, abs=1e-5)
    assert geo.column_direction == pytest.approx(col, abs=1e-5)
    normal = np.cross(row, col)
    assert np.dot(geo.slice_direction, normal) == pytest.approx(1.0, abs=1e-5)
    for k, path in enumerate(sorted(paths)):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        uid_index = [s.sop_instance_uid for s in volume.slices].index(str(ds.SOPInstanceUID))
        position = [float(v) for v in ds.ImagePositionPatient]
        assert np.allclose(geo.voxel_to_patient([uid_index, 0, 0]), position)
        assert float(volume.hu[uid_index, 20, 20]) == 10.0 * k


def test_gantry_tilt_is_resampled_onto_an_orthogonal_stack(tmp_path: Path) -> None:
    # A tilted acquisition: each slice's origin steps 1 row (0.7 mm) along y per 2 mm in z (~19°).
    # A structure fixed in patient space then appears 1 row higher on each successive source image.
    n = 6
    hu = np.zeros((n, 32, 32), dtype=np.int16)
    for k in range(n):
        hu[k, 20 - k, 10] = 1000
    positions = [(-100.0, -120.0 + 0.7 * k, -50.0 + 2.0 * k) for k in range(n)]
    write_series(tmp_path, hu, positions=positions)
    volume = load_series_dir(tmp_path)
    # After resampling, the structure sits at the same voxel in every slice.
    peaks = [np.unravel_index(int(np.argmax(volume.hu[k])), volume.hu.shape[1:]) for k in range(n)]
    assert all(p == (20, 10) for p in peaks), peaks
    assert volume.geometry.slice_direction == pytest.approx((0.0, 0.0, 1.0))
    assert volume.geometry.spacing_mm[0] == pytest.approx(2.0)


def test_uneven_spacing_is_refused_with_the_numbers(tmp_path: Path) -> None:
    z = [0.0, 2.0, 4.0, 8.0, 10.0]  # slice at 6 mm missing
    write_series(tmp_path, numbered_phantom(5), positions=[(-100.0, -120.0, v) for v in z])
    with pytest.raises(NotApplicable, match=r"uneven slice spacing: gaps from 2\.00 to 4\.00"):
        load_series_dir(tmp_path)


def test_small_spacing_jitter_is_accepted(tmp_path: Path) -> None:
    z = [0.0, 2.0, 4.01, 6.0, 7.99]
    write_series(tmp_path, numbered_phantom(5), positions=[(-100.0, -120.0, v) for v in z])
    assert load_series_dir(tmp_path).geometry.spacing_mm[0] == pytest.approx(2.0, abs=0.01)


def test_not_ct_is_refused(tmp_path: Path) -> None:
    write_series(tmp_path, numbered_phantom(4), modality="MR")
    with pytest.raises(NotApplicable, match="modality is MR, not CT"):
        load_series_dir(tmp_path)


def test_localizer_is_refused(tmp_path: Path) -> None:
    write_series(tmp_path, numbered_phantom(2), image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    with pytest.raises(NotApplicable, match="localizer"):
        load_series_dir(tmp_path)


def test_two_series_are_refused_unless_one_is_chosen(tmp_path: Path) -> None:
    write_series(tmp_path / "a", numbered_phantom(3), series_uid="1.2.3.1")
    write_series(tmp_path / "b", numbered_phantom(5), series_uid="1.2.3.2")
    with pytest.raises(NotApplicable, match="hold 2 series"):
        load_series_dir(tmp_path)
    assert load_series_dir(tmp_path, series_instance_uid="1.2.3.2").shape[0] == 5


def test_duplicate_positions_are_refused(tmp_path: Path) -> None:
    write_series(tmp_path, numbered_phantom(3), positions=[(0.0, 0.0, 0.0), (0.0, 0.0, 2.0), (0.0, 0.0, 2.0)])
    with pytest.raises(NotApplicable, match="share the slice position"):
        load_series_dir(tmp_path)


def test_no_dicom_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not DICOM")
    with pytest.raises(NotApplicable, match="no DICOM images"):
        load_series_dir(tmp_path)


def test_non_dicom_files_beside_a_series_are_skipped(tmp_path: Path) -> None:
    write_series(tmp_path, numbered_phantom(3))
    (tmp_path / "README").write_text("hello")
    assert load_series_dir(tmp_path).shape[0] == 3


def test_legacy_converted_enhanced_ct_multiframe(tmp_path: Path) -> None:
    from highdicom.legacy import LegacyConvertedEnhancedCTImage

    hu = numbered_phantom(5)
    paths = write_series(tmp_path / "single", hu, slope=1.0, intercept=-1024.0)
    singles = [pydicom.dcmread(p) for p in paths]
    for ds in singles:
        prepare_for_highdicom_legacy(ds)
    enhanced = LegacyConvertedEnhancedCTImage(
        legacy_datasets=singles,
        series_instance_uid=pydicom.uid.generate_uid(),
        series_number=2,
        sop_instance_uid=pydicom.uid.generate_uid(),
        instance_number=1,
    )
    out = tmp_path / "multi" / "enhanced.dcm"
    out.parent.mkdir()
    enhanced.save_as(out)
    volume = load_series([out])
    assert volume.shape == (5, 32, 32)
    assert [float(volume.hu[k, 20, 20]) for k in range(5)] == [10.0 * k for k in range(5)]
    assert {s.sop_instance_uid for s in volume.slices} == {str(enhanced.SOPInstanceUID)}
    assert sorted(s.frame_number or 0 for s in volume.slices) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_compressed_transfer_syntaxes_decode_exactly(tmp_path: Path, syntax: str) -> None:
    hu = numbered_phantom(4) - 500
    paths = write_series(tmp_path, hu.astype(np.int16))
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.compress(syntax)
        ds.save_as(path)
    assert str(pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID) == syntax
    volume = load_series(paths)
    assert np.array_equal(volume.hu, hu.astype(np.float32))


@pytest.mark.needs("gdcm")
def test_jpeg_lossless_from_gdcmconv_decodes_exactly(tmp_path: Path) -> None:
    gdcmconv = shutil.which("gdcmconv")
    assert gdcmconv is not None
    hu = numbered_phantom(3) - 300
    paths = write_series(tmp_path / "raw", hu.astype(np.int16))
    out_dir = tmp_path / "jpeg"
    out_dir.mkdir()
    for path in paths:
        subprocess.run([gdcmconv, "--jpeg", "--lossless", str(path), str(out_dir / path.name)], check=True)
    ts = str(pydicom.dcmread(next(out_dir.iterdir())).file_meta.TransferSyntaxUID)
    assert ts.startswith("1.2.840.10008.1.2.4.")  # a JPEG family syntax
    volume = load_series_dir(out_dir)
    assert np.array_equal(volume.hu, hu.astype(np.float32))
