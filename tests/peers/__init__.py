"""Real DICOM peers for the tests (Orthanc, DCMTK), started on loopback with ephemeral ports."""
