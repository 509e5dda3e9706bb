"""The ``destinations:`` section of the node's config: where results go, and how.

A destination is named in the node's YAML under ``destinations:``; its ``type`` picks the transport
(``node/export`` has one client per type)::

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
        auth: {type: bearer, token_file: /run/secrets/pacs-web-token}
      orthanc:
        type: orthanc-rest
        url: http://orthanc:8042
        username: ainode
        password_file: /run/credentials/ainode.service/orthanc-password

The secrets the node sends are best given as files (``password_file:``, ``token_file:``), as Docker secrets
and systemd credentials deliver them, so that the YAML holds none; inline ``password:``/``token:`` still work.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Annotated, Any, Literal

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

from node.dicom_names import validate_ae_title

# --- identifiers ---------------------------------------------------------------------------------

# Destination names become log fields and index keys: keep them boring.
DESTINATION_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


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


def secret_from_file(data: Any, key: str) -> Any:
    """``KEY_file: PATH`` (a Docker secret, a systemd credential): the file's content becomes ``KEY``.

    Read once, when the config is loaded; a trailing newline is not part of the secret. An unreadable or
    empty file stops start-up naming the key."""
    if not isinstance(data, dict) or data.get(f"{key}_file") is None:
        return data
    path = Path(str(data[f"{key}_file"]))
    if data.get(key) is not None:
        raise ValueError(f"give {key} or {key}_file, not both")
    try:
        value = path.read_text(encoding="utf-8").removesuffix("\n").removesuffix("\r")
    except OSError as exc:
        raise ValueError(f"{key}_file {path}: cannot read it ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{key}_file {path}: not UTF-8 text") from None
    if not value:
        raise ValueError(f"{key}_file {path} is empty")
    return {**data, key: value}


class BasicAuth(_Model):
    type: Literal["basic"]
    username: str = Field(min_length=1)
    password: SecretStr
    password_file: Path | None = Field(default=None, description="File holding the password (recommended).")

    @model_validator(mode="before")
    @classmethod
    def _password_from_file(cls, data: Any) -> Any:
        return secret_from_file(data, "password")


class BearerAuth(_Model):
    type: Literal["bearer"]
    token: SecretStr
    token_file: Path | None = Field(default=None, description="File holding the token (recommended).")

    @model_validator(mode="before")
    @classmethod
    def _token_from_file(cls, data: Any) -> Any:
        return secret_from_file(data, "token")


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
    password_file: Path | None = Field(default=None, description="File holding the password (recommended).")
    tls: HttpTls = HttpTls()
    timeout_s: float = Field(default=60.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _password_from_file(cls, data: Any) -> Any:
        return secret_from_file(data, "password")

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
