"""DIMSE status codes the node answers with (PS3.4 Annex B, PS3.7 Annex C). Never bare numbers."""

from __future__ import annotations

import enum


class StoreStatus(enum.IntEnum):
    SUCCESS = 0x0000
    # Warning: coercion of data elements / elements discarded / dataset does not match SOP class.
    WARNING_COERCION = 0xB000
    WARNING_ELEMENTS_DISCARDED = 0xB006
    WARNING_DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xB007
    # Failure
    OUT_OF_RESOURCES = 0xA700
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    PROCESSING_FAILURE = 0x0110
    REFUSED_NOT_AUTHORIZED = 0x0124
    # Further codes a C-STORE SCP may answer (PS3.7 C.4.2), classified by node/export/failures.py.
    DUPLICATE_SOP_INSTANCE = 0x0111
    INVALID_OBJECT_INSTANCE = 0x0117
    NO_SUCH_SOP_CLASS = 0x0118
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    CANCEL = 0xFE00


class EchoStatus(enum.IntEnum):
    SUCCESS = 0x0000


class AssociateRejectResult(enum.IntEnum):
    REJECTED_PERMANENT = 0x01
    REJECTED_TRANSIENT = 0x02


class AssociateRejectSource(enum.IntEnum):
    SERVICE_USER = 0x01
    SERVICE_PROVIDER_ACSE = 0x02
    SERVICE_PROVIDER_PRESENTATION = 0x03


class AssociateRejectReason(enum.IntEnum):
    """Reasons when the source is SERVICE_USER."""

    NO_REASON_GIVEN = 0x01
    CALLING_AE_NOT_RECOGNIZED = 0x03
    CALLED_AE_NOT_RECOGNIZED = 0x07


class AssociateRejectProviderReason(enum.IntEnum):
    """Reasons when the source is SERVICE_PROVIDER_PRESENTATION."""

    TEMPORARY_CONGESTION = 0x01
    LOCAL_LIMIT_EXCEEDED = 0x02
