"""DICOM names the node checks wherever they enter: AE titles (the UID rule is in ``node.uids``).

A leaf module: config, the stages and the CLI all use the same rule, and it imports nothing of theirs.
"""

from __future__ import annotations

import re

# DICOM PS3.5 AE VR: 1-16 characters of the default repertoire, no backslash or control
# characters; leading/trailing spaces are not significant and an all-space title is invalid.
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")


def validate_ae_title(value: str) -> str:
    """The AE title without its insignificant spaces; ValueError (pydantic reports it on the field) if invalid."""
    stripped = value.strip()
    if not stripped or not _AE_TITLE.match(value) or len(value) > 16:
        raise ValueError(
            f"{value!r} is not a valid AE title (1-16 printable ASCII characters, no backslash, not blank)"
        )
    return stripped
