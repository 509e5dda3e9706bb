"""Receiving: the DICOM storage SCP and the completeness detector."""
