"""PACS AI node: the DICOM service beside a PACS. Not for diagnostic use."""

__version__ = "0.1.0"
