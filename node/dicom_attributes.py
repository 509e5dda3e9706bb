"""The DICOM attributes routing rules see, and the one way they are turned into plain values.

A leaf module shared by the store (which keeps these attributes per series in the index, where the
live node's router reads them) and ``ainode route-test`` (which reads them from files): both call
:func:`routing_attributes`, so a series routes the same in both.
"""

from __future__ import annotations

from typing import Any

import pydicom
from pydicom.dataset import Dataset

# Series/study attributes kept for routing rules (the index's ``series.attributes``). No patient identity.
ROUTING_KEYWORDS = (
    "Modality",
    "BodyPartExamined",
    "SeriesDescription",
    "StudyDescription",
    "ProtocolName",
    "ImageType",
    "SliceThickness",
    "Manufacturer",
    "ManufacturerModelName",
    "ConvolutionKernel",
    "ContrastBolusAgent",
    "SOPClassUID",
    "SeriesNumber",
    "KVP",
    "PatientPosition",
    "StationName",
    "InstitutionName",
    "InstitutionalDepartmentName",
    "ScanOptions",
    "ReconstructionDiameter",
    "NumberOfFrames",
)

# Attributes the router must never see or print: routing on them would put them in explanations and logs.
FORBIDDEN_KEYWORDS = frozenset(
    {"PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "OtherPatientIDs", "PatientAddress"}
)

AttributeValue = str | float | int | list[Any] | None


def plain_value(value: object) -> AttributeValue:
    """Plain JSON for a DICOM value: multi-valued → list, IS → int, DS → float, anything else as text.

    JSON round-trips it unchanged, so the value read back from the index equals the one computed here.
    """
    if value is None:
        return None
    if isinstance(value, pydicom.multival.MultiValue | list | tuple):
        return [plain_value(v) for v in value]
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return int(value)  # IS is an int subclass: a plain int
    if isinstance(value, float):
        return float(value)  # DSfloat is a float subclass: a plain float
    if isinstance(value, pydicom.valuerep.DSdecimal):
        return float(value)
    return str(value)


def routing_attributes(ds: Dataset) -> dict[str, AttributeValue]:
    """The routing attributes present in ``ds`` (top level), as plain values."""
    return {keyword: plain_value(ds.get(keyword)) for keyword in ROUTING_KEYWORDS if keyword in ds}
