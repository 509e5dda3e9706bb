"""Reading generated or received DICOM files back in the tests."""

from __future__ import annotations

from pathlib import Path


def dataset_bytes(path: Path) -> bytes:
    """The bytes of a Part-10 file after its File Meta group (what "byte-identical dataset" compares)."""
    import io

    from pydicom.filereader import _read_file_meta_info, read_preamble

    data = path.read_bytes()
    stream = io.BytesIO(data)
    read_preamble(stream, force=False)
    _read_file_meta_info(stream)
    return data[stream.tell() :]
