"""Export destinations: the common ``Destination`` interface and its outcome types.

Destinations are configured under ``destinations:`` (their models: ``node/config/destinations.py``);
``node/export/transports.py`` builds the client for each.

``send(paths)`` returns a ``DeliveryReport`` with one ``FileOutcome`` per file; problems that stop the
whole transfer before any file could be attempted (refused connection, rejected association, wrong
URL, bad credentials) raise ``DeliveryError`` directly. Either way ``permanent`` tells the outbox
whether retrying can help.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from node.errors import DeliveryError

# --- outcome types -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileOutcome:
    """What happened to one file. ``permanent`` is None when the file was delivered."""

    path: Path
    sop_instance_uid: str | None
    delivered: bool
    detail: str
    permanent: bool | None = None

    @staticmethod
    def success(path: Path, sop_instance_uid: str | None, detail: str = "stored") -> FileOutcome:
        return FileOutcome(path, sop_instance_uid, True, detail, None)

    @staticmethod
    def failure(path: Path, sop_instance_uid: str | None, detail: str, *, permanent: bool) -> FileOutcome:
        return FileOutcome(path, sop_instance_uid, False, detail, permanent)


@dataclass(frozen=True)
class DeliveryReport:
    destination: str
    outcomes: tuple[FileOutcome, ...] = field(default_factory=tuple)

    @property
    def delivered(self) -> tuple[FileOutcome, ...]:
        return tuple(o for o in self.outcomes if o.delivered)

    @property
    def failed(self) -> tuple[FileOutcome, ...]:
        return tuple(o for o in self.outcomes if not o.delivered)

    @property
    def ok(self) -> bool:
        return not self.failed

    def raise_for_failures(self) -> None:
        """Raise one ``DeliveryError`` summarising the failures (if any).

        Permanent only when every failure is permanent: if one file failed transiently, a retry of
        the failed files can still make progress.
        """
        failed = self.failed
        if not failed:
            return
        permanent = all(bool(o.permanent) for o in failed)
        first = failed[0]
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        raise DeliveryError(
            f"{self.destination}: {len(failed)} of {len(self.outcomes)} file(s) not delivered: "
            f"{first.path.name}: {first.detail}{more}",
            permanent=permanent,
        )


@dataclass(frozen=True)
class DeletionOutcome:
    """What happened to one instance a destination was asked to delete (``superseded: delete``)."""

    sop_instance_uid: str
    deleted: bool
    detail: str
    permanent: bool | None = None  # None when deleted


# --- the common interface ------------------------------------------------------------------------


@runtime_checkable
class Destination(Protocol):
    """A place results are delivered to. Implementations are cheap to build and hold no open connection."""

    name: str

    def send(self, paths: Sequence[Path]) -> DeliveryReport:
        """Deliver DICOM Part-10 files; raises ``DeliveryError`` when nothing could be attempted."""
        ...

    def ping(self) -> None:
        """Health check (C-ECHO / HTTP GET); raises ``DeliveryError`` classified like ``send``."""
        ...


@runtime_checkable
class DeletingDestination(Destination, Protocol):
    """A destination that can also delete instances it holds (Orthanc REST; ``superseded: delete``)."""

    def delete_instances(self, sop_instance_uids: Sequence[str]) -> list[DeletionOutcome]:
        """Delete by SOP Instance UID; one that is not there counts as deleted. ``DeliveryError`` like ``send``."""
        ...
