"""Routing: rules on DICOM tags choose the pipelines and destinations for a complete series."""
