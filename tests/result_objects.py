"""Small result-like DICOM objects for delivery tests (the real encoders land elsewhere).

Secondary Capture and Comprehensive 3D SR are built with pydicom, a SEG with highdicom from a few
real CT slices, all in the CT's study so they sit beside it in the PACS.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import Comprehensive3DSRStorage, ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from demo.paths import SIEMENS_CT

SECONDARY_CAPTURE = SecondaryCaptureImageStorage
COMPREHENSIVE_3D_SR = Comprehensive3DSRStorage


def ct_files(folder: Path = SIEMENS_CT) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file())


def _base(source: Dataset, sop_class: str, modality: str, series_number: int) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    for keyword in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "StudyID",
        "AccessionNumber",
        "ReferringPhysicianName",
    ):
        setattr(ds, keyword, source.get(keyword, ""))
    ds.Modality = modality
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = series_number
    ds.InstanceNumber = 1
    ds.Manufacturer = "AINODE TEST"
    return ds


def make_secondary_capture(path: Path, source: Path | None = None) -> Path:
    src = pydicom.dcmread(source or ct_files()[0], stop_before_pixels=True)
    ds = _base(src, SECONDARY_CAPTURE, "OT", 9001)
    ds.ConversionType = "WSD"
    ds.SeriesDescription = "AI test secondary capture"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 16
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = (np.arange(256, dtype=np.uint8)).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def make_comprehensive_3d_sr(path: Path, source: Path | None = None) -> Path:
    src = pydicom.dcmread(source or ct_files()[0], stop_before_pixels=True)
    ds = _base(src, COMPREHENSIVE_3D_SR, "SR", 9002)
    ds.SeriesDescription = "AI test report"
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    title = Dataset()
    title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning = (
        "126000",
        "DCM",
        "Imaging Measurement Report",
    )
    ds.ConceptNameCodeSequence = DicomSequence([title])
    text = Dataset()
    text.RelationshipType, text.ValueType, text.TextValue = (
        "CONTAINS",
        "TEXT",
        "Test finding. NOT FOR DIAGNOSTIC USE.",
    )
    name = Dataset()
    name.CodeValue, name.CodingSchemeDesignator, name.CodeMeaning = "121071", "DCM", "Finding"
    text.ConceptNameCodeSequence = DicomSequence([name])
    ds.ContentSequence = DicomSequence([text])
    ds.save_as(path, enforce_file_format=True)
    return path


def make_segmentation(path: Path, sources: list[Path] | None = None) -> Path:
    """A binary SEG over three real CT slices (highdicom), with a small square "nodule"."""
    import highdicom as hd

    images = [pydicom.dcmread(p) for p in (sources or ct_files()[40:43])]
    images.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    mask = np.zeros((len(images), images[0].Rows, images[0].Columns), dtype=bool)
    mask[1, 200:210, 200:210] = True
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="nodule",
        segmented_property_category=hd.sr.CodedConcept("49755003", "SCT", "Morphologically Abnormal Structure"),
        segmented_property_type=hd.sr.CodedConcept("27925004", "SCT", "Nodule"),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="test", version="0", family=hd.sr.CodedConcept("123109", "DCM", "Manual Processing")
        ),
    )
    seg = hd.seg.Segmentation(
        source_images=images,
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=generate_uid(),
        series_number=9003,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="AINODE TEST",
        manufacturer_model_name="test",
        software_versions="0",
        device_serial_number="0",
    )
    seg.save_as(path)
    return path


def make_results(folder: Path) -> list[Path]:
    """SC, Comprehensive 3D SR and SEG in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    return [
        make_secondary_capture(folder / "sc.dcm"),
        make_comprehensive_3d_sr(folder / "sr.dcm"),
        make_segmentation(folder / "seg.dcm"),
    ]
