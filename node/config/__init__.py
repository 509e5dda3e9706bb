"""Node configuration: pydantic models loaded from YAML and checked at start-up.

Every default lives here, once. A bad file stops the node with the field and the reason
(``ConfigError``), never with a traceback from deep inside a stage.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any, Literal

import argon2
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FilePath,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

# The retry policy's model sits with the backoff it parameterises, in node/export (see ARCHITECTURE.md:
# the one import of the config layer upwards, left while the outbox's retry logic is being changed).
from node.config.delivery import RetryPolicy
from node.config.destinations import DestinationConfig, DestinationName
from node.config.routes import Route, RoutingSection, unindexed_keywords
from node.dicom_attributes import ROUTING_KEYWORDS
from node.dicom_names import validate_ae_title
from node.errors import ConfigError


def validate_ip_address(value: str) -> str:
    ipaddress.ip_address(value)  # raises ValueError with a clear message
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AllowedCaller(_Model):
    """A peer allowed to open associations: its calling AE title and, optionally, its host and the client
    certificate it must present."""

    ae_title: str
    host: str | None = Field(default=None, description="IP address the peer must connect from")
    # Binds the AE title to a client certificate: this caller is then accepted only on the TLS port, with a
    # certificate (verified against dicom.tls.ca_file) whose subject common name is exactly this.
    certificate_cn: str | None = Field(default=None, min_length=1, max_length=64)

    _check_aet = field_validator("ae_title")(validate_ae_title)

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str | None) -> str | None:
        if value is not None:
            ipaddress.ip_address(value)  # raises ValueError with a clear message
        return value


class DicomTlsConfig(_Model):
    """DICOM TLS (PS3.15 B.1) on a second port beside the plain one (or instead of it)."""

    port: int = Field(default=2762, ge=1, le=65535)  # 2762: IANA's dicom-tls
    cert_file: FilePath  # our certificate (PEM, chain after the leaf)
    key_file: FilePath
    # CA(s) that sign the client certificates we accept; without it no client certificate is asked for.
    ca_file: FilePath | None = None
    # Mutual TLS: a peer without a client certificate signed by ca_file fails the handshake.
    require_client_cert: bool = False
    min_version: Literal["1.2", "1.3"] = "1.2"
    # Serve DICOM only over TLS: dicom.port is then not opened.
    disable_plain_port: bool = False

    @model_validator(mode="after")
    def _ca_for_client_certs(self) -> DicomTlsConfig:
        if self.require_client_cert and self.ca_file is None:
            raise ValueError("require_client_cert needs ca_file (the CA that signs the client certificates)")
        return self


class DicomConfig(_Model):
    ae_title: str = "AINODE"
    bind_address: str = "0.0.0.0"
    port: int = Field(default=11112, ge=1, le=65535)
    allowed_callers: list[AllowedCaller] = Field(default_factory=list)
    # When true, any calling AE may store (lab use only); the allow-list is then ignored.
    accept_any_caller: bool = False
    max_associations: int = Field(default=8, ge=1, le=256)
    # 0 = unlimited; large PDUs cut the per-PDU overhead of the Python SCP substantially.
    max_pdu_bytes: int = Field(default=0, ge=0)
    network_timeout_s: float = Field(default=60.0, gt=0)
    dimse_timeout_s: float = Field(default=60.0, gt=0)
    # A connection that has not completed its A-ASSOCIATE request this soon is dropped; it never holds
    # one of the max_associations slots (those go to callers that passed the allow-list).
    handshake_timeout_s: float = Field(default=5.0, gt=0, le=60)
    tls: DicomTlsConfig | None = None

    _check_aet = field_validator("ae_title")(validate_ae_title)

    _check_bind = field_validator("bind_address")(validate_ip_address)

    @model_validator(mode="after")
    def _tls_consistent(self) -> DicomConfig:
        bound = [c.ae_title for c in self.allowed_callers if c.certificate_cn is not None]
        if bound and self.accept_any_caller:
            # accept_any_caller ignores the allow-list: the binding would silently protect nothing.
            raise ValueError(f"allowed_callers {bound} name a certificate_cn, which accept_any_caller would ignore")
        if bound and (self.tls is None or self.tls.ca_file is None):
            raise ValueError(
                f"allowed_callers {bound} name a certificate_cn: that needs tls.ca_file "
                "(the CA that signs the client certificates)"
            )
        if self.tls is not None and self.tls.port == self.port and not self.tls.disable_plain_port:
            raise ValueError(f"tls.port {self.tls.port} is also dicom.port: give the TLS listener its own port")
        return self


class StorageConfig(_Model):
    data_dir: Path = Path("./ainode-data")
    # Below this much free disk, new instances are refused with Out of Resources (0xA700).
    min_free_disk_mb: int = Field(default=1024, ge=0)


_QUEUE_NAME = re.compile(r"^[a-z][a-z0-9-]{0,31}$")


class IndexConfig(_Model):
    # sqlite: one file in storage.data_dir, one machine (the default). postgresql: one server shared by every
    # receiver and worker of a cluster, reached by the libpq connection string postgresql_dsn; a password comes
    # from libpq's own places (PGPASSFILE, ~/.pgpass), never from this file.
    backend: Literal["sqlite", "postgresql"] = "sqlite"
    postgresql_dsn: str = ""

    @model_validator(mode="after")
    def _dsn_for_postgresql(self) -> IndexConfig:
        if self.backend == "postgresql" and not self.postgresql_dsn:
            raise ValueError("postgresql_dsn is required with backend: postgresql")
        if re.search(r"password\s*=|://[^/@]*:[^/@]*@", self.postgresql_dsn):
            raise ValueError("postgresql_dsn holds a password: put it in a PGPASSFILE (~/.pgpass) instead")
        return self


class DispatchConfig(_Model):
    # embedded: the node's own worker processes claim jobs from the index (the default). celery: jobs go to
    # RabbitMQ queues and `ainode worker` processes on any machine run them (cluster mode: needs
    # index.backend postgresql and storage.data_dir on storage every receiver and worker mounts).
    engine: Literal["embedded", "celery"] = "embedded"
    # amqp://USER@HOST:PORT/VHOST; the password, if any, in broker_password_file (one line).
    broker_url: str = ""
    broker_password_file: FilePath | None = None
    # A queue per device class: jobs of a pipeline go to pipeline_queues[pipeline], else default_queue.
    pipeline_queues: dict[str, str] = Field(default_factory=dict)
    default_queue: str = "cpu"
    # The queues `ainode worker` consumes (its device classes); empty: default_queue.
    worker_queues: list[str] = Field(default_factory=list)
    # A queued job published this long ago and still not started is published again (the broker lost it,
    # or its message waits behind a backlog: a duplicate message is a no-op, the index decides who runs it).
    republish_after_s: float = Field(default=600.0, gt=0)
    check_interval_s: float = Field(default=1.0, gt=0)

    @model_validator(mode="after")
    def _broker_for_celery(self) -> DispatchConfig:
        if self.engine == "celery" and not self.broker_url.startswith("amqp://"):
            raise ValueError("broker_url (amqp://USER@HOST:PORT/VHOST) is required with engine: celery")
        if re.search(r"://[^/@]*:[^/@]*@", self.broker_url):
            raise ValueError("broker_url holds a password: put it in broker_password_file instead")
        for queue in [self.default_queue, *self.pipeline_queues.values(), *self.worker_queues]:
            if not _QUEUE_NAME.match(queue):
                raise ValueError(f"queue {queue!r}: lower-case letters, digits and '-', at most 32")
        return self


class CompletenessConfig(_Model):
    # A series with no new instance for this long is complete, whatever its geometry.
    quiet_period_s: float = Field(default=30.0, gt=0)
    # A series whose slice positions form one gap-free evenly spaced run is complete after this.
    settle_s: float = Field(default=3.0, ge=0)
    check_interval_s: float = Field(default=1.0, gt=0)
    # Relative tolerance on slice spacing when judging "evenly spaced".
    spacing_tolerance: float = Field(default=0.1, gt=0, lt=1)

    @model_validator(mode="after")
    def _settle_before_quiet(self) -> CompletenessConfig:
        if self.settle_s > self.quiet_period_s:
            raise ValueError("settle_s must not exceed quiet_period_s")
        return self


class WorkerConfig(_Model):
    processes: int = Field(default=1, ge=0, le=32)  # 0: no workers (receive-only node)
    job_timeout_s: float = Field(default=900.0, gt=0)
    lease_s: float = Field(default=60.0, gt=0)
    max_attempts: int = Field(default=2, ge=1)
    # Where pipelines run their models: auto (CUDA when present, else CPU) | cpu (even on a GPU machine) |
    # cuda (start-up fails on a machine without it).
    device: Literal["auto", "cpu", "cuda"] = "auto"
    torch_threads: int = Field(default=0, ge=0)  # 0: let torch decide
    # Per pipeline, its own options (e.g. lung-nodule: {detection_threshold: 0.4}); checked against the
    # options the pipeline declares (pipelines.registry), handed to it when a worker builds it.
    pipeline_options: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @field_validator("pipeline_options")
    @classmethod
    def _known_options(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        from pipelines.registry import pipeline_names
        from pipelines.registry import pipeline_options as check_options

        for name, options in value.items():
            if name not in pipeline_names():
                raise ValueError(f"unknown pipeline {name!r}; known: {', '.join(pipeline_names())}")
            try:
                check_options(name, options)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
        return value


class LoggingConfig(_Model):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "console"] = "json"


class DeliveryConfig(_Model):
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    check_interval_s: float = Field(default=1.0, gt=0)
    # Files handed to one destination in one go (one association / one STOW-RS request).
    batch_size: int = Field(default=64, ge=1, le=1000)


# --- HTTP operations surface (node/api) ---------------------------------------------------------------
# How the config holds the API's secrets (node/api/secret_hash.py makes and checks them; `ainode hash-secret`):
# basic mode (people's passwords): an argon2id hash, salted, slow and memory-hard, because passwords are guessable;
# token mode (bearer tokens): "sha256:" + the token's SHA-256 hex digest. Tokens are machine-made and long (at least
# 128 bits of randomness from `ainode hash-secret --token --generate`), so no hash speed makes guessing one
# feasible, and a bearer token is checked on every request, where argon2 (~64 MiB, tens of ms) would be a DoS.
TOKEN_DIGEST_PATTERN = re.compile(r"^sha256:[0-9a-f]{64}$")
HASH_SECRET_ADVICE = "run `ainode hash-secret` (basic mode) or `ainode hash-secret --token` (token mode)"


def secret_hash_kind(value: str) -> Literal["argon2id", "sha256"] | None:
    """Which of the two accepted forms ``value`` is, or None (malformed)."""
    if TOKEN_DIGEST_PATTERN.match(value):
        return "sha256"
    if value.startswith("$argon2id$"):
        try:
            argon2.extract_parameters(value)
        except argon2.exceptions.InvalidHashError:
            return None
        return "argon2id"
    return None


class HttpCredential(_Model):
    """One credential of the HTTP API: a bearer token (auth.mode token) or a user's password (basic), held as a
    hash (``secret_hash``); the clear-text ``secret`` of earlier versions is refused."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")
    secret_hash: SecretStr
    # Only so that a clear-text `secret:` left in an old config is refused with a message saying what to do.
    secret: SecretStr | None = Field(default=None, exclude=True)
    # viewer: read the API and the worklist; operator: also re-run studies, retry deliveries and
    # upload over STOW-RS; sender: STOW-RS only (a PACS or modality pushing studies).
    role: Literal["viewer", "operator", "sender"] = "viewer"
    # Calling AE recorded for instances this credential stores over STOW-RS (routing rules see it),
    # the HTTP counterpart of the DICOM allow-list; default http.stow_calling_ae.
    ae_title: str | None = None

    @field_validator("secret")
    @classmethod
    def _no_clear_text(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            raise ValueError(
                f"clear-text secrets are refused: {HASH_SECRET_ADVICE}, type the secret, "
                "and put what it prints in `secret_hash:` in place of `secret:`"
            )
        return value

    @field_validator("secret_hash")
    @classmethod
    def _well_formed(cls, value: SecretStr) -> SecretStr:
        if secret_hash_kind(value.get_secret_value()) is None:
            raise ValueError(f"not an argon2id hash nor a sha256:HEX token digest ({HASH_SECRET_ADVICE})")
        return value

    @field_validator("ae_title")
    @classmethod
    def _check_aet(cls, value: str | None) -> str | None:
        return None if value is None else validate_ae_title(value)


class HttpAuthConfig(_Model):
    mode: Literal["token", "basic"] = "token"
    credentials: list[HttpCredential] = Field(default_factory=list)
    # /healthz, /readyz and /metrics answer requests from 127.0.0.1/::1 without credentials.
    open_health_on_loopback: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> HttpAuthConfig:
        names = [c.name for c in self.credentials]
        if len(names) != len(set(names)):
            raise ValueError("credential names must be unique")
        wanted = "sha256" if self.mode == "token" else "argon2id"
        for credential in self.credentials:
            kind = secret_hash_kind(credential.secret_hash.get_secret_value())
            if kind != wanted:
                needed = (
                    "a sha256:HEX token digest (`ainode hash-secret --token`)"
                    if wanted == "sha256"
                    else "an argon2id password hash (`ainode hash-secret`): a fast digest would not protect a password"
                )
                raise ValueError(f"credential {credential.name!r}: mode {self.mode} needs {needed}")
        # A bearer token alone says who is calling: two credentials with one token would be ambiguous.
        digests = [c.secret_hash.get_secret_value() for c in self.credentials]
        for index, credential in enumerate(self.credentials):
            if self.mode == "token" and digests[index] in digests[:index]:
                raise ValueError(f"credential {credential.name!r} has the same secret as another credential")
        return self


class HttpServerTls(_Model):
    """HTTPS for the API, STOW-RS and the worklist (uvicorn with the node's own SSLContext)."""

    cert_file: FilePath  # PEM, the server certificate (and its chain)
    key_file: FilePath  # PEM, its private key (unencrypted; readable by the node's user only)
    # A CA bundle: when given, clients must present a certificate it signed (mutual TLS).
    ca_file: FilePath | None = None
    min_version: Literal["1.2", "1.3"] = "1.2"
    # Strict-Transport-Security max-age on every response (browsers then refuse plain HTTP to this host).
    hsts_max_age_s: int = Field(default=31_536_000, ge=0)


class HttpConfig(_Model):
    enabled: bool = False
    bind_address: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)  # 0: an ephemeral port (tests)
    # HTTPS when given (no plain HTTP is served then).
    tls: HttpServerTls | None = None
    auth: HttpAuthConfig = Field(default_factory=HttpAuthConfig)
    # Patient name and ID on the worklist page and in the JSON API; never in logs either way.
    show_patient_identity: bool = False
    # A study whose highest malignancy probability reaches this is flagged as priority.
    priority_threshold: float = Field(default=0.5, ge=0, le=1)
    # Pipelines whose findings are nodules (the worklist counts them); others report measurements.
    findings_pipelines: list[str] = Field(default_factory=lambda: ["lung-nodule"])
    viewer_url_template: str = "http://localhost:3000/viewer?StudyInstanceUIDs={study_uid}"
    stow_calling_ae: str = "STOWRS"
    refresh_interval_s: float = Field(default=15.0, ge=2)
    # Largest STOW-RS request body accepted (bytes), refused (413) as soon as it is exceeded; the body is
    # read as a stream, its parts spooled to temp files beside the spool (memory stays a few MB).
    max_stow_bytes: int = Field(default=2 * 1024**3, ge=1024)

    _check_stow_aet = field_validator("stow_calling_ae")(validate_ae_title)

    _check_bind = field_validator("bind_address")(validate_ip_address)

    @field_validator("viewer_url_template")
    @classmethod
    def _check_template(cls, value: str) -> str:
        if "{study_uid}" not in value:
            raise ValueError("viewer_url_template must contain {study_uid}")
        try:
            value.format(study_uid="1.2.3")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"viewer_url_template: only {{study_uid}} may be substituted ({exc})") from None
        return value


# --- audit trail (node/audit): IHE ATNA / DICOM PS3.15 A.5 audit messages ----------------------------
class AuditSyslogConfig(_Model):
    """The audit record repository (collector) the messages are sent to, as RFC 5424 syslog."""

    # udp: RFC 5426 (one datagram per message, nothing known of its fate); tls: RFC 5425 (octet-counted
    # frames over TLS 1.2+, the collector's certificate verified against ca_file).
    transport: Literal["udp", "tls"] = "tls"
    host: str
    port: int | None = Field(default=None, ge=1, le=65535)  # default 514 (udp) or 6514 (tls)
    # TLS: the CA that signed the collector's certificate (default: the system's trust store), and the
    # name its certificate must carry (default: host).
    ca_file: Path | None = None
    server_name: str | None = None
    # TLS: a client certificate for collectors that authenticate their senders (mutual TLS, as ATNA asks).
    cert_file: Path | None = None
    key_file: Path | None = None

    @model_validator(mode="after")
    def _tls_files(self) -> AuditSyslogConfig:
        if self.transport == "udp" and (self.ca_file or self.cert_file or self.key_file):
            raise ValueError("ca_file, cert_file and key_file need transport: tls")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name}: {path} is not a readable file")
        return self


class AuditConfig(_Model):
    enabled: bool = False
    # The local append-only copy (one RFC 5424 message per line); relative paths are under storage.data_dir.
    file: Path = Path("audit/audit-trail.log")
    syslog: AuditSyslogConfig | None = None
    # AuditSourceID of every message (default: dicom.ae_title), and the site it belongs to.
    source_id: str | None = Field(default=None, min_length=1, max_length=64)
    enterprise_site_id: str | None = Field(default=None, min_length=1, max_length=64)
    # Messages waiting for the writer thread; past this, new ones are dropped and counted
    # (ainode_audit_messages_dropped_total): auditing never blocks or breaks the node.
    queue_size: int = Field(default=10000, ge=10, le=1_000_000)


class PriorSourceConfig(_Model):
    """A PACS the node asks for a patient's earlier CT studies (follow-up reading)."""

    name: str = Field(min_length=1, max_length=64)
    # dimse: C-FIND (study, then series level) and C-GET of the chosen series; dicomweb: QIDO-RS and WADO-RS.
    protocol: Literal["dimse", "dicomweb"] = "dimse"
    host: str = "127.0.0.1"
    port: int = Field(default=104, ge=1, le=65535)
    ae_title: str = "ANY-SCP"  # the PACS's (called) AE title
    url: str | None = None  # dicomweb: the QIDO-RS/WADO-RS root, e.g. http://pacs:8042/dicom-web
    timeout_s: float = Field(default=60.0, gt=0)

    _check_aet = field_validator("ae_title")(validate_ae_title)

    @model_validator(mode="after")
    def _url_for_dicomweb(self) -> PriorSourceConfig:
        if self.protocol == "dicomweb" and not self.url:
            raise ValueError("protocol dicomweb needs url (the DICOMweb root)")
        return self


class FollowupOutputs(_Model):
    """Which follow-up outputs the encoders write (each switchable)."""

    # The SR's follow-up content: prior measurements, growth, Lung-RADS, Brock risk, shared tracking UIDs.
    followup_in_sr: bool = True
    # The Grad-CAM Secondary Captures (for PACS that show only images).
    gradcam_sc: bool = True


class FollowupConfig(_Model):
    """Follow-up reading: find the patient's earlier chest CT, track each nodule, Lung-RADS and Brock risk."""

    enabled: bool = False
    # How far back a prior may be (days before the current study's StudyDate).
    lookback_days: int = Field(default=1095, ge=1, le=36500)
    # Where priors are looked for, in order; the first that answers with a chest CT is used.
    sources: list[PriorSourceConfig] = Field(default_factory=list)
    calling_ae_title: str = "AINODE"  # our AE title in C-FIND / C-GET associations
    # BodyPartExamined values of a chest CT (an empty BodyPartExamined counts as chest: many scanners leave it).
    chest_body_parts: list[str] = Field(default_factory=lambda: ["CHEST", "LUNG", "THORAX", "CHEST_ABDOMEN"])
    outputs: FollowupOutputs = Field(default_factory=FollowupOutputs)

    _check_aet = field_validator("calling_ae_title")(validate_ae_title)


def default_routes() -> list[Route]:
    """Without a `routes:` section: every CT series that is not a localizer goes to the lung-nodule
    pipeline, and its results stay on the node (no destination)."""
    return [
        Route.model_validate(
            {
                "name": "ct-lung-nodule",
                "when": {
                    "all": [{"tag": "Modality", "equals": "CT"}, {"not": {"tag": "ImageType", "one_of": ["LOCALIZER"]}}]
                },
                "pipelines": ["lung-nodule"],
            }
        )
    ]


class NodeConfig(_Model):
    dicom: DicomConfig = Field(default_factory=DicomConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    index: IndexConfig = Field(default_factory=IndexConfig)
    dispatch: DispatchConfig = Field(default_factory=DispatchConfig)
    completeness: CompletenessConfig = Field(default_factory=CompletenessConfig)
    workers: WorkerConfig = Field(default_factory=WorkerConfig)
    delivery: DeliveryConfig = Field(default_factory=DeliveryConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    followup: FollowupConfig = Field(default_factory=FollowupConfig)
    destinations: dict[DestinationName, DestinationConfig] = Field(default_factory=dict)
    routes: list[Route] = Field(default_factory=default_routes)

    @model_validator(mode="after")
    def _cluster_needs_shared_index(self) -> NodeConfig:
        if self.dispatch.engine == "celery" and self.index.backend != "postgresql":
            raise ValueError("dispatch.engine celery needs index.backend postgresql (workers on other machines)")
        return self

    @model_validator(mode="after")
    def _routes_consistent(self) -> NodeConfig:
        # pipelines/ is beside node/, not above it: the registry names pipelines without importing them.
        from pipelines.registry import pipeline_names

        # Same checks as `ainode route-test`: unique names, one trailing fallback, known destinations.
        RoutingSection.model_validate(
            {
                "routes": [r.model_dump(by_alias=True) for r in self.routes],
                "destinations": {name: {} for name in self.destinations},
            }
        )
        # The running node evaluates rules on the tags its index keeps per series: a rule on any
        # other keyword would silently never match, so it is refused here.
        for route_name, keywords in unindexed_keywords(self.routes, ROUTING_KEYWORDS).items():
            raise ValueError(
                f"route {route_name!r} tests {', '.join(keywords)}, which the node does not index; "
                f"routable tags: {', '.join(ROUTING_KEYWORDS)}"
            )
        known = set(pipeline_names())
        for route in self.routes:
            unknown = [p for p in route.pipelines if p not in known]
            if unknown:
                raise ValueError(f"route {route.name!r} names unknown pipeline(s) {unknown}; known: {sorted(known)}")
        return self


def unrouted_result_warnings(routes: list[Route]) -> list[str]:
    """Routes whose DICOM results reach no destination (they stay on the node, nobody is told)."""
    from pipelines.registry import pipeline_names, pipeline_outputs

    out = []
    for route in routes:
        # A pipeline with outputs makes DICOM objects to deliver (an unknown name is refused elsewhere).
        producing = [p for p in route.pipelines if p in pipeline_names() and pipeline_outputs(p)]
        if producing and not route.destinations:
            out.append(
                f"route {route.name!r} runs {', '.join(producing)} but names no destination: "
                "its results stay on the node and never reach the PACS (add `destinations:` to the route)"
            )
    return out


def configuration_warnings(config: NodeConfig) -> list[str]:
    """What is valid but almost certainly not meant: said at start-up and by `ainode check-config`."""
    out = []
    if not config.dicom.allowed_callers and not config.dicom.accept_any_caller:
        out.append(
            "dicom.allowed_callers is empty: every association will be rejected "
            "(add callers in the config or with --allow AET[@HOST])"
        )
    if config.http.enabled and not config.http.auth.credentials:
        out.append("http.auth.credentials is empty: the API, the worklist and STOW-RS refuse everyone")
    if config.audit.syslog is not None and not config.audit.enabled:
        out.append("audit.syslog is set but audit.enabled is false: no audit message is kept or sent")
    if config.audit.enabled and config.audit.syslog is None:
        out.append("audit.enabled without audit.syslog: audit messages stay in the local file, no collector gets them")
    out += unrouted_result_warnings(config.routes)
    return out


def _format_validation_error(source: str, exc: ValidationError) -> str:
    lines = [f"invalid configuration in {source}:"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {where}: {err['msg']}")
    return "\n".join(lines)


def parse_config(data: dict[str, Any], source: str = "<config>") -> NodeConfig:
    try:
        return NodeConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(source, exc)) from None


def load_config(path: Path | None, overrides: dict[str, dict[str, Any]] | None = None) -> NodeConfig:
    """Load ``path`` (or the embedded defaults when None), apply CLI overrides, validate."""
    data: dict[str, Any] = {}
    source = "embedded defaults"
    if path is not None:
        source = str(path)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read configuration {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"configuration {path} is not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"configuration {path} must be a mapping at the top level")
        data = loaded
        # A relative data_dir is the config file's folder's, not the current directory's: `ainode status
        # --config FILE` then finds the node's index from anywhere. (--data-dir is the caller's, cwd.)
        storage = data.get("storage")
        if storage is None or isinstance(storage, dict):
            storage = dict(storage or {})
            data_dir = Path(str(storage.get("data_dir", StorageConfig().data_dir)))
            storage["data_dir"] = str(data_dir if data_dir.is_absolute() else path.parent.resolve() / data_dir)
            data["storage"] = storage
    for section, values in (overrides or {}).items():
        merged = dict(data.get(section) or {})
        merged.update({k: v for k, v in values.items() if v is not None})
        data[section] = merged
    return parse_config(data, source)
