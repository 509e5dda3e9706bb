"""The one TLS policy of the node's listening ports (HTTPS in ``node/api/server.py``, DICOM TLS in
``node/receive/tls.py``): TLS 1.2 or newer; in TLS 1.2 only ECDHE key exchange with AES-GCM or ChaCha20-Poly1305
(forward secrecy, AEAD; OpenSSL's defaults also offer CBC and non-ECDHE suites); TLS 1.3's suites are all AEAD and
are not affected by ``set_ciphers``. No compression (CRIME), no renegotiation (a client-initiated DoS), fresh ECDHE
keys per handshake, the server's cipher order.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Literal

from node.errors import ConfigError

TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL"
MIN_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def server_tls_context(
    field: str,
    *,
    cert_file: Path,
    key_file: Path,
    ca_file: Path | None,
    min_version: Literal["1.2", "1.3"],
    client_certificates: ssl.VerifyMode,
) -> ssl.SSLContext:
    """A server context; ``client_certificates`` applies when ``ca_file`` is given (the CA that signs them).

    A file that does not load raises ``ConfigError`` naming ``{field}.cert_file/key_file`` or ``{field}.ca_file``,
    so a bad certificate stops start-up instead of failing the first handshake."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MIN_VERSIONS[min_version]
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= (
        ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_SINGLE_ECDH_USE | ssl.OP_CIPHER_SERVER_PREFERENCE
    )
    try:
        context.load_cert_chain(str(cert_file), str(key_file))
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"{field}.cert_file/key_file: cannot load {cert_file} with {key_file}: {exc}") from None
    if ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(ca_file))
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"{field}.ca_file: cannot load {ca_file}: {exc}") from None
        context.verify_mode = client_certificates
    return context
