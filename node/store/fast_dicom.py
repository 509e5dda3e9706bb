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
import zlib

import pydicom
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.pixels.common import PhotometricInterpretation
from pydicom.tag import BaseTag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ExplicitVRLittleEndian, RLELossless

from node.errors import DatasetDoesNotMatchSOPClassError, InvalidDatasetError
from node.logging_setup import scrub_values

PIXEL_DATA_TAG = 0x7FE00010
UNDEFINED_LENGTH = 0xFFFFFFFF
# Sequence Delimitation Item: ends encapsulated (compressed) Pixel Data.
SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
ITEM_TAG = b"\xfe\xff\x00\xe0"
SEQUENCE_DELIMITER_TAG = b"\xfe\xff\xdd\xe0"
# Deflated datasets are inflated here, bounded: past MAX_INFLATED_BYTES, or past INFLATION_RATIO_FLOOR
# bytes at more than MAX_INFLATION_RATIO times the deflated size, the instance is refused (a 34 KB message
# inflating to 32 MB of zeros is a bomb; real CT deflates by 2-10 times).
MAX_INFLATED_BYTES = 1024**3
MAX_INFLATION_RATIO = 100
INFLATION_RATIO_FLOOR = 4 * 1024**2
_JPEG_SYNTAXES = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
                  "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"}  # fmt: skip
_J2K_SYNTAXES = {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201",
                 "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"}  # fmt: skip
_LONG_LENGTH_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UN", b"UC", b"UR", b"UT"}
# What an image decoder needs from the Image Pixel module (PS3.3 C.7.6.3, Type 1), each one US value: without
# them, or with a value of another VR (a corrupted header), pydicom cannot decode the pixels later.
_PIXEL_MODULE_INTEGERS = ("Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "BitsStored", "PixelRepresentation")
_PHOTOMETRIC_INTERPRETATIONS = frozenset(p.value for p in PhotometricInterpretation)
_PIXEL_DATA_VRS = (b"OB", b"OW")
_IDENTIFYING_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


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


def is_image_storage(sop_class_uid: str) -> bool:
    """Image storage SOP classes (CT Image Storage, Enhanced CT..., Secondary Capture...) need an image."""
    return "Image Storage" in UID(sop_class_uid).name


def parse_header(
    dataset_bytes: bytes, transfer_syntax: UID, file_meta_bytes: bytes, *, require_image: bool = False
) -> Dataset:
    """The dataset without its Pixel Data, after checking that the Pixel Data is complete and every
    element can be read (an unknown VR would otherwise fail later, in the index or a pipeline).

    Raises InvalidDatasetError for anything that cannot be parsed or is cut short, and (with
    ``require_image``) DatasetDoesNotMatchSOPClassError when there is no image to decode.
    """
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        inflated = inflate_bounded(dataset_bytes)
        return parse_header(inflated, UID(ExplicitVRLittleEndian), file_meta_bytes, require_image=require_image)
    if transfer_syntax == ExplicitVRBigEndian or not transfer_syntax.is_transfer_syntax:
        return _full_parse(file_meta_bytes + dataset_bytes, require_image)
    stream = io.BytesIO(dataset_bytes)
    try:
        ds = read_dataset(stream, transfer_syntax.is_implicit_VR, True, stop_when=_stop_at_pixel_data)
    except Exception as exc:  # pydicom raises many types on garbage; all mean "cannot understand"
        raise InvalidDatasetError(f"dataset cannot be parsed: {type(exc).__name__}: {scrub_values(str(exc))}") from None
    check_elements_readable(ds)
    check_uid_vrs(ds)
    pixel_offset = stream.tell()
    if pixel_offset < len(dataset_bytes):
        if require_image:
            _check_image_attributes(ds)
        _check_pixel_element(ds, dataset_bytes, pixel_offset, transfer_syntax)
    elif require_image:
        raise DatasetDoesNotMatchSOPClassError("image storage SOP class without Pixel Data")
    return ds


def inflate_bounded(data: bytes) -> bytes:
    """Inflate a deflated dataset, refusing decompression bombs (see MAX_INFLATED_BYTES)."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    chunks: list[bytes] = []
    total = 0
    pending = data
    try:
        while pending or not inflater.eof:
            chunk = inflater.decompress(pending, 1024 * 1024)
            pending = inflater.unconsumed_tail
            total += len(chunk)
            chunks.append(chunk)
            if total > MAX_INFLATED_BYTES or (
                total > INFLATION_RATIO_FLOOR and total > MAX_INFLATION_RATIO * len(data)
            ):
                raise InvalidDatasetError(
                    f"deflated dataset inflates past {total} bytes from {len(data)} (limit "
                    f"{MAX_INFLATED_BYTES} bytes, ratio {MAX_INFLATION_RATIO}): refused"
                )
            if not chunk and not pending:
                break
    except zlib.error as exc:
        raise InvalidDatasetError(f"deflated dataset cannot be inflated: {exc}") from None
    return b"".join(chunks)


def check_elements_readable(ds: Dataset) -> None:
    """Convert every element (pydicom converts lazily), refusing what cannot be converted."""
    for tag in list(ds.keys()):
        try:
            elem = ds[tag]
        except NotImplementedError:
            try:
                raw_vr = getattr(ds.get_item(tag), "VR", "?")
            except NotImplementedError:  # an empty element: get_item converts it too
                raw_vr = "?"
            raise InvalidDatasetError(f"element {tag} has an unknown VR {raw_vr!r}") from None
        except Exception as exc:
            raise InvalidDatasetError(f"element {tag} cannot be read: {type(exc).__name__}") from None
        if elem.VR == "SQ" and elem.value is not None:
            for item in elem.value:
                check_elements_readable(item)


def check_uid_vrs(ds: Dataset) -> None:
    """The UIDs that file and index an instance are UI elements: under another VR (AE, LO...) pydicom keeps the
    UI padding (a trailing NUL) in the value, and the index would hold another UID than the one acknowledged."""
    for keyword in _IDENTIFYING_UIDS:
        if keyword in ds and ds[keyword].VR != "UI":
            raise InvalidDatasetError(f"{keyword} has VR {ds[keyword].VR}, not UI")


def _check_image_attributes(ds: Dataset) -> None:
    values: dict[str, int] = {}
    for keyword in _PIXEL_MODULE_INTEGERS:
        try:
            value = ds.get(keyword)
        except Exception:  # a value pydicom cannot convert
            value = None
        if not isinstance(value, int):
            raise DatasetDoesNotMatchSOPClassError(f"image without a usable {keyword} (Image Pixel module)")
        values[keyword] = value
    rows, columns, samples, bits = (values[k] for k in ("Rows", "Columns", "SamplesPerPixel", "BitsAllocated"))
    if rows < 1 or columns < 1 or samples < 1 or bits not in (1, 8, 16, 32, 64):
        raise DatasetDoesNotMatchSOPClassError(
            f"no decodable image: Rows {rows}, Columns {columns}, Samples {samples}, Bits Allocated {bits}"
        )
    if not 1 <= values["BitsStored"] <= bits or values["PixelRepresentation"] not in (0, 1):
        raise DatasetDoesNotMatchSOPClassError(
            f"no decodable image: Bits Stored {values['BitsStored']} of {bits} allocated, "
            f"Pixel Representation {values['PixelRepresentation']}"
        )
    photometric = ds.get("PhotometricInterpretation")
    if not isinstance(photometric, str) or photometric not in _PHOTOMETRIC_INTERPRETATIONS:
        # The value itself is not echoed: it came from the wire.
        raise DatasetDoesNotMatchSOPClassError("image without a known Photometric Interpretation")


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
        if data[offset + 4 : offset + 6] not in _PIXEL_DATA_VRS:
            raise InvalidDatasetError(f"Pixel Data with VR {data[offset + 4 : offset + 6]!r}, not OB or OW")
        (length,) = struct.unpack_from("<I", data, offset + 8)
    if length == UNDEFINED_LENGTH:
        _check_fragments(data, offset + header, transfer_syntax)
        return
    if transfer_syntax.is_compressed:
        raise InvalidDatasetError("native pixel data under a compressed transfer syntax")
    available = len(data) - offset - header
    if available < length:
        raise InvalidDatasetError(f"pixel data truncated: {available} bytes, element says {length}")
    if not transfer_syntax.is_compressed:
        expected = _native_pixel_bytes(ds)
        if length < expected:
            raise InvalidDatasetError(f"pixel data truncated: {length} bytes, image needs {expected}")


def _check_fragments(data: bytes, start: int, transfer_syntax: UID) -> None:
    """Encapsulated Pixel Data: a Basic Offset Table item, fragments, a Sequence Delimitation Item,
    and a first fragment that starts as its transfer syntax's codestream does."""
    position, items = start, []
    while True:
        if len(data) < position + 8:
            raise InvalidDatasetError("compressed pixel data truncated (no sequence delimiter)")
        tag, (length,) = data[position : position + 4], struct.unpack_from("<I", data, position + 4)
        if tag == SEQUENCE_DELIMITER_TAG:
            break
        if tag != ITEM_TAG or length == UNDEFINED_LENGTH:
            raise InvalidDatasetError("compressed pixel data is not a sequence of fragments")
        if len(data) < position + 8 + length:
            raise InvalidDatasetError("compressed pixel data truncated (fragment cut short)")
        items.append((position + 8, length))
        position += 8 + length
    fragments = items[1:]  # the first item is the Basic Offset Table
    if not fragments or fragments[0][1] == 0:
        raise InvalidDatasetError("compressed pixel data without fragments")
    first_at, first_length = fragments[0]
    first = data[first_at : first_at + min(first_length, 64)]
    if transfer_syntax in _JPEG_SYNTAXES:
        ok = first.startswith(b"\xff\xd8")
    elif transfer_syntax in _J2K_SYNTAXES:
        ok = first.startswith((b"\xff\x4f\xff\x51", b"\x00\x00\x00\x0cjP  "))
    elif transfer_syntax == RLELossless:
        segments = struct.unpack_from("<I", first)[0] if len(first) >= 8 else 0
        ok = len(first) == 64 and 1 <= segments <= 15 and struct.unpack_from("<I", first, 4)[0] == 64
    else:
        ok = True  # video and other syntaxes: no cheap check
    if not ok:
        raise InvalidDatasetError(f"compressed pixel data is not a {transfer_syntax.name} codestream")


def _native_pixel_bytes(ds: Dataset) -> int:
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        return int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * int(ds.BitsAllocated) * frames // 8
    except (AttributeError, TypeError, ValueError) as exc:
        raise InvalidDatasetError(f"image attributes missing or malformed: {exc}") from None


def _full_parse(part10: bytes, require_image: bool) -> Dataset:
    try:
        ds = pydicom.dcmread(io.BytesIO(part10))
    except Exception as exc:  # see parse_header
        raise InvalidDatasetError(f"dataset cannot be parsed: {type(exc).__name__}: {scrub_values(str(exc))}") from None
    check_elements_readable(ds)
    check_uid_vrs(ds)
    if require_image:
        if "PixelData" not in ds:
            raise DatasetDoesNotMatchSOPClassError("image storage SOP class without Pixel Data")
        _check_image_attributes(ds)
    if "PixelData" in ds and ds["PixelData"].VR not in ("OB", "OW"):
        raise InvalidDatasetError(f"Pixel Data with VR {ds['PixelData'].VR!r}, not OB or OW")
    if "PixelData" in ds and not ds.file_meta.TransferSyntaxUID.is_compressed:
        actual, expected = len(ds.PixelData), _native_pixel_bytes(ds)
        if actual < expected:
            raise InvalidDatasetError(f"pixel data truncated: {actual} bytes, image needs {expected}")
    return ds
