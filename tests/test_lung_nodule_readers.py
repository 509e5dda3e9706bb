"""LUNA16 MetaImage + annotations.csv and LIDC XML readers, on small files written here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from demo.ct_factory import numbered_phantom, write_series
from pipelines.loading import load_series_dir
from pipelines.lung_nodule.training.readers import read_lidc_xml, read_luna16_annotations, read_mhd

pytestmark = pytest.mark.ai


def test_luna16_mhd_and_annotations(tmp_path: Path) -> None:
    hu = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6) - 1000
    (tmp_path / "1.2.3.raw").write_bytes(hu.tobytes())
    (tmp_path / "1.2.3.mhd").write_text(
        "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
        "TransformMatrix = 1 0 0 0 1 0 0 0 1\nOffset = -10 -20 -30\nElementSpacing = 0.7 0.8 2.5\n"
        "DimSize = 6 5 4\nElementType = MET_SHORT\nElementDataFile = 1.2.3.raw\n"
    )
    volume = read_mhd(tmp_path / "1.2.3.mhd")
    assert volume.shape == (4, 5, 6)
    assert np.array_equal(volume.hu, hu.astype(np.float32))
    assert volume.geometry.spacing_mm == (2.5, 0.8, 0.7)
    assert np.allclose(volume.geometry.voxel_to_patient([1, 2, 3]), [-10 + 2.1, -20 + 1.6, -30 + 2.5])
    (tmp_path / "annotations.csv").write_text(
        "seriesuid,coordX,coordY,coordZ,diameter_mm\n1.2.3,-8.0,-18.4,-27.5,6.1\n1.2.3,0,0,0,4\n"
    )
    nodules = read_luna16_annotations(tmp_path / "annotations.csv")
    assert len(nodules["1.2.3"]) == 2
    assert nodules["1.2.3"][0].diameter_mm == pytest.approx(6.1)


def test_lidc_xml_locates_outlines_on_the_series(tmp_path: Path) -> None:
    write_series(tmp_path / "ct", numbered_phantom(6), spacing=(2.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    volume = load_series_dir(tmp_path / "ct")
    rois = ""
    for k in (2, 3):
        edges = "".join(
            f"<edgeMap><xCoord>{x}</xCoord><yCoord>{y}</yCoord></edgeMap>" for x, y in [(10, 10), (16, 10), (16, 14)]
        )
        rois += f"<roi><imageSOP_UID>{volume.slices[k].sop_instance_uid}</imageSOP_UID>{edges}</roi>"
    (tmp_path / "reads.xml").write_text(
        '<LidcReadMessage xmlns="http://www.nih.gov"><readingSession><unblindedReadNodule>'
        f"<noduleID>1</noduleID><characteristics><malignancy>4</malignancy></characteristics>{rois}"
        "</unblindedReadNodule></readingSession></LidcReadMessage>"
    )
    (nodule,) = read_lidc_xml(tmp_path / "reads.xml", volume)
    assert nodule.malignancy == (4,)
    assert nodule.diameter_mm == pytest.approx(6.0)
    assert nodule.centre_mm[2] == pytest.approx(5.0)  # between slices 2 (4 mm) and 3 (6 mm)
