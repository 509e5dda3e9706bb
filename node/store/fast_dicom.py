"""The two DICOM encoding steps on the C-STORE hot path, done without pydicom's general machinery.

Profiling the receive path (benchmarks/bench_receive.py) showed pydicom's File Meta writer and a
full ``dcmread`` of each 0.5 MB instance costing more CPU than pynetdicom's whole network stack.
Both have a simple, fixed job here:

* :func:`encode_file_meta` writes the preamble and group 0002 (Explicit VR Little Endian, always).
  ``tests/test_fast_dicom.py`` checks it byte for byte against pydicom's ``write_file_meta_info``.
* :func:`parse_header` reads every element before Pixel Data with pydicom, then checks the Pixel Data
  element's header itself (length present and complete) instead of copying the pixels. Transfer
  syntaxes it does not handle (deflated, big endian) fall back to a full ``dcmread``.
"""

from __future__ import annotations

import io
import struct

import pydicom
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian

from node.errors import InvalidDatasetError

PIXEL_DATA_TAG = 0x7FE00010
UNDEFINED_LENGTH = 0xFFFFFFFF
# Sequence Delimitation Item: ends encapsulated (compressed) Pixel Data.
SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_LONG_LENGTH_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UN", b"UC", b"UR", b"UT"}


def _element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    if vr in _LONG_LENGTH_VRS:
        return struct.pack("<HH2sHI", group, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def _ui(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw  # UI pads with NUL to an even length


def _sh(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b" " if len(raw) % 2 else raw


def encode_file_meta(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, implementation_uid: str, version_name: str
) -> bytes:
    """128-byte preamble, 'DICM' and the File Meta Information group, as pydicom would write them."""
    body = b"".join(
        [
            _element(0x0002, 0x0001, b"OB", b"\x00\x01"),
            _element(0x0002, 0x0002, b"UI", _ui(sop_class_uid)),
            _element(0x0002, 0x0003, b"UI", _ui(sop_instance_uid)),
            _element(0x0002, 0x0010, b"UI", _ui(transfer_syntax_uid)),
            _element(0x0002, 0x0012, b"UI", _ui(implementation_uid)),
            _element(0x0002, 0x0013, b"SH", _sh(version_name)),
        ]
    )
    group_length = _element(0x0002, 0x0000, b"UL", struct.pack("<I", len(body)))
    return b"\x00" * 128 + b"DICM" + group_length + body


def _stop_at_pixel_data(tag: BaseTag, vr: str | None, length: int) -> bool:
    return int(tag) == PIXEL_DATA_TAG


def parse_header(dataset_bytes: bytes, transfer_syntax: UID, file_meta_bytes: bytes) -> Dataset:
    """The dataset without its Pixel Data, after checking that the Pixel Data is complete.

    Raises InvalidDatasetError for anything that cannot be parsed or is cut short.
    """
    if (
        transfer_syntax in (DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian)
        or not transfer_syntax.is_transfer_syntax
    ):
        return _full_parse(file_meta_bytes + dataset_bytes)
    stream = io.BytesIO(dataset_bytes)
    try:
        ds = read_dataset(stream, transfer_syntax.is_implicit_VR, True, stop_when=_stop_at_pixel_data)
    except Exception as exc:  # pydicom raises many types on garbage; all mean "cannot understand"
        raise InvalidDatasetError(f"dataset cannot be parsed: {type(exc).__name__}: {exc}") from None
    pixel_offset = stream.tell()
    if pixel_offset < len(dataset_bytes):
        _check_pixel_element(ds, dataset_bytes, pixel_offset, transfer_syntax)
    return ds


def _check_pixel_element(ds: Dataset, data: bytes, offset: int, transfer_syntax: UID) -> None:
    if transfer_syntax.is_implicit_VR:
        header = 8
        if len(data) < offset + header:
            raise InvalidDatasetError("Pixel Data element cut short")
        (length,) = struct.unpack_from("<I", data, offset + 4)
    else:
        header = 12
        if len(data) < offset + header:
            raise InvalidDatasetError("Pixel Data element cut short")
        (length,) = struct.unpack_from("<I", data, offset + 8)
    if length == UNDEFINED_LENGTH:
        # Encapsulated fragments end with a Sequence Delimitation Item; a cut stream lacks it.
        if data.rfind(SEQUENCE_DELIMITER, offset + header) < 0:
            raise InvalidDatasetError("compressed pixel data truncated (no sequence delimiter)")
        return
    available = len(data) - offset - header
    if available < length:
        raise InvalidDatasetError(f"pixel data truncated: {available} bytes, element says {length}")
    if not transfer_syntax.is_compressed:
        expected = _native_pixel_bytes(ds)
        if length < expected:
            raise InvalidDatasetError(f"pixel data truncated: {length} bytes, image needs {expected}")


def _native_pixel_bytes(ds: Dataset) -> int:
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        return int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * int(ds.BitsAllocated) * frames // 8
    except (AttributeError, TypeError, ValueError) as exc:
        raise InvalidDatasetError(f"image attributes missing or malformed: {exc}") from None


def _full_parse(part10: bytes) -> Dataset:
    try:
        ds = pydicom.dcmread(io.BytesIO(part10))
    except Exception as exc:  # see parse_header
        raise InvalidDatasetError(f"dataset cannot be parsed: {type(exc).__name__}: {exc}") from None
    if "PixelData" in ds and not ds.file_meta.TransferSyntaxUID.is_compressed:
        actual, expected = len(ds.PixelData), _native_pixel_bytes(ds)
        if actual < expected:
            raise InvalidDatasetError(f"pixel data truncated: {actual} bytes, image needs {expected}")
    return ds
