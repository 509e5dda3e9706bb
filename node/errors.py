"""The node's error types. Every error the node raises on purpose is a NodeError."""

from __future__ import annotations


class NodeError(Exception):
    """Base class of every deliberate error in the node."""


class ConfigError(NodeError):
    """The configuration is invalid; the message names the field and the reason."""


class InvalidIdentifierError(NodeError):
    """A UID, AE title or other identifier from the wire is malformed."""


class InvalidDatasetError(NodeError):
    """A received dataset cannot be stored (unreadable, missing required attributes...)."""


class DatasetDoesNotMatchSOPClassError(InvalidDatasetError):
    """The dataset lacks what its SOP class requires (an image storage instance without an image)."""


class OutOfResourcesError(NodeError):
    """Free disk is below the configured watermark; new data is refused, stored data is kept."""


class StoreError(NodeError):
    """The durable store could not complete an operation."""


class EncodeError(NodeError):
    """Findings cannot be encoded as valid DICOM (mask off the grid, unknown reference...)."""


class DeliveryError(NodeError):
    """A result could not be delivered to a destination.

    ``permanent`` tells the outbox whether retrying can help (False: refused connection,
    timeout, HTTP 5xx, DIMSE 0xA7xx) or not (True: association rejected, HTTP 4xx,
    DIMSE refusal / error statuses).
    """

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


class RoutingError(NodeError):
    """A routing rule is invalid or cannot be evaluated."""
