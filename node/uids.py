"""Validation of identifiers that arrive from the wire before they touch a path or a query."""

from __future__ import annotations

import re

from node.errors import InvalidIdentifierError

# PS3.5 §9.1: digits and dots, at most 64 characters. Components with leading zeros are not
# conformant but appear in real archives, so they are accepted; anything else (letters, '/',
# '..', empty components) is refused.
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def validate_uid(value: object, what: str = "UID") -> str:
    if not isinstance(value, str):
        raise InvalidIdentifierError(f"{what} is missing or not text")
    uid = value.strip().rstrip("\x00")
    if not uid:
        raise InvalidIdentifierError(f"{what} is empty")
    if len(uid) > 64:
        raise InvalidIdentifierError(f"{what} is longer than 64 characters")
    if not _UID.match(uid):
        # The value itself is not echoed: it came from the wire and may be anything (a patient's name).
        raise InvalidIdentifierError(f"{what} is not a valid DICOM UID (digits and dots only, {len(uid)} characters)")
    return uid
