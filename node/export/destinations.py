"""Export destinations: config models, the common ``Destination`` interface and its outcome types.

A destination is named in the node's YAML under ``destinations:``; its ``type`` picks the transport::

    destinations:
      pacs:
        type: dimse
        ae_title: PACS
        host: 10.0.0.5
        port: 104
        calling_ae_title: AINODE
      pacs-web:
        type: stow-rs
        url: https://pacs.example.org/dicom-web
        auth: {type: bearer, token: "..."}
      orthanc:
        type: orthanc-rest
        url: http://orthanc:8042
        username: ainode
        password: "..."

``send(paths)`` returns a ``DeliveryReport`` with one ``FileOutcome`` per file; problems that stop the
whole transfer before any file could be attempted (refused connection, rejected association, wrong
URL, bad credentials) raise ``DeliveryError`` directly. Either way ``permanent`` tells the outbox
whether retrying can help.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal, Protocol, runtime_checkable

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    FilePath,
    SecretStr,
    TypeAdapter,
    field_validator,
    model_validator,
)

from node.errors import DeliveryError

# --- identifiers ---------------------------------------------------------------------------------

# Destination names become log fields and index keys: keep them boring.
DESTINATION_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


def validate_ae_title(value: str) -> str:
    # One AE-title rule for the whole node, kept in node.config; imported here at validation time
    # because node.config itself imports this module.
    from node.config import validate_ae_title as validate

    return validate(value)


# --- config models -------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# What happens at a destination to the results of a run that a newer run of the same series replaced
# (the series grew after they were made), once the newer results are delivered there:
#   keep   - they stay beside the new ones (told apart by their series description);
#   reject - an IHE IOCM rejection note (a Key Object Selection Document) lists them, so the PACS hides them;
#   delete - they are deleted through the destination's REST API (Orthanc only).
SupersededPolicy = Literal["keep", "reject", "delete"]
# The rejection note's title (PS3.16 CID 7010): quality = (113001, DCM, "Rejected for Quality Reasons"),
# retention = (113039, DCM, "Data Retention Policy Expired").
RejectionReason = Literal["quality", "retention"]


class _WithdrawsSuperseded(_Model):
    """The per-destination choice of what becomes of superseded results (``superseded``, ``rejection_reason``)."""

    superseded: SupersededPolicy = "keep"
    rejection_reason: RejectionReason = "quality"

    @model_validator(mode="after")
    def _reason_only_for_reject(self) -> _WithdrawsSuperseded:
        # A reason other than the default says the site means to reject: refuse it when nothing is rejected.
        # (Not "given at all": worker processes get the config dumped, every default spelled out.)
        if self.rejection_reason != "quality" and self.superseded != "reject":
            raise ValueError(
                f"rejection_reason {self.rejection_reason!r} applies only to superseded: reject "
                f"(this is {self.superseded!r})"
            )
        return self


def _no_delete_without_rest(value: str) -> str:
    if value == "delete":
        raise ValueError(
            "superseded: delete needs an orthanc-rest destination (deletion through Orthanc's REST API); "
            "use reject (an IOCM rejection note) or keep"
        )
    return value


class DimseTls(_Model):
    """TLS for DICOM (PS3.15 B.1): ``ca_file`` verifies the peer, ``cert_file``/``key_file`` identify us."""

    ca_file: FilePath | None = None
    cert_file: FilePath | None = None
    key_file: FilePath | None = None
    verify: bool = True
    server_hostname: str | None = Field(
        default=None, description="Name the peer's certificate carries; defaults to the host."
    )

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> DimseTls:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together")
        return self

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_file) if self.ca_file else None
        )
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.cert_file is not None and self.key_file is not None:
            context.load_cert_chain(str(self.cert_file), str(self.key_file))
        return context


class HttpTls(_Model):
    verify: bool = True
    ca_file: FilePath | None = Field(default=None, description="CA bundle that signed the server certificate.")

    def requests_verify(self) -> bool | str:
        """The ``verify`` argument of requests: False, True or a CA bundle path."""
        if not self.verify:
            return False
        return str(self.ca_file) if self.ca_file is not None else True

    def httpx_verify(self) -> bool | ssl.SSLContext:
        """The ``verify`` argument of httpx (a path string is deprecated there): False, True or a context."""
        if not self.verify:
            return False
        if self.ca_file is None:
            return True
        return ssl.create_default_context(cafile=str(self.ca_file))


class DimseDestinationConfig(_WithdrawsSuperseded):
    type: Literal["dimse"]
    ae_title: str = Field(description="Called AE title of the peer (the PACS).")
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    calling_ae_title: str = Field(default="AINODE", description="Our AE title; the peer must know it.")
    timeout_s: float = Field(default=30.0, gt=0, description="Connect, ACSE, DIMSE and network timeout.")
    max_pdu_length: int = Field(default=0, ge=0, description="0 = unlimited (fastest on a LAN).")
    tls: DimseTls | None = None

    _validate_ae = field_validator("ae_title", "calling_ae_title")(validate_ae_title)
    _check_superseded = field_validator("superseded")(_no_delete_without_rest)


class BasicAuth(_Model):
    type: Literal["basic"]
    username: str = Field(min_length=1)
    password: SecretStr


class BearerAuth(_Model):
    type: Literal["bearer"]
    token: SecretStr


HttpAuth = Annotated[BasicAuth | BearerAuth, Field(discriminator="type")]


class StowRsDestinationConfig(_WithdrawsSuperseded):
    type: Literal["stow-rs"]
    url: AnyHttpUrl = Field(description="DICOMweb service root, e.g. http://pacs:8042/dicom-web")
    auth: HttpAuth | None = None
    tls: HttpTls = HttpTls()
    timeout_s: float = Field(default=60.0, gt=0)

    _check_superseded = field_validator("superseded")(_no_delete_without_rest)


class OrthancRestDestinationConfig(_WithdrawsSuperseded):
    type: Literal["orthanc-rest"]
    url: AnyHttpUrl = Field(description="Orthanc REST root, e.g. http://orthanc:8042")
    username: str | None = None
    password: SecretStr | None = None
    tls: HttpTls = HttpTls()
    timeout_s: float = Field(default=60.0, gt=0)

    @model_validator(mode="after")
    def _user_and_password_together(self) -> OrthancRestDestinationConfig:
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password must be given together")
        return self


DestinationConfig = Annotated[
    DimseDestinationConfig | StowRsDestinationConfig | OrthancRestDestinationConfig,
    Field(discriminator="type"),
]
DestinationName = Annotated[str, Field(pattern=DESTINATION_NAME_PATTERN)]

# `destinations:` in the node's YAML: name -> config.
DESTINATIONS_ADAPTER: TypeAdapter[dict[DestinationName, DestinationConfig]] = TypeAdapter(
    dict[DestinationName, DestinationConfig]
)


def parse_destinations(raw: object) -> dict[str, DestinationConfig]:
    """Validate the ``destinations:`` mapping; raises pydantic ``ValidationError`` naming the field."""
    return DESTINATIONS_ADAPTER.validate_python(raw if raw is not None else {})


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


def build_destination(name: str, config: DestinationConfig) -> Destination:
    """The transport client for one configured destination."""
    # Imported here so that importing the config models does not pull in pynetdicom/requests.
    if isinstance(config, DimseDestinationConfig):
        from node.export.dimse import DimseDestination

        return DimseDestination(name, config)
    if isinstance(config, StowRsDestinationConfig):
        from node.export.stowrs import StowRsDestination

        return StowRsDestination(name, config)
    from node.export.orthanc_rest import OrthancRestDestination

    return OrthancRestDestination(name, config)


def build_destinations(configs: dict[str, DestinationConfig]) -> dict[str, Destination]:
    return {name: build_destination(name, cfg) for name, cfg in configs.items()}
