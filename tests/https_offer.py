"""What the node's HTTPS offers, as `openssl s_client` sees it: TLS versions and cipher suites accepted.

    python -m tests.https_offer            # a node with the test CA's ECDSA certificate
    python -m tests.https_offer --rsa      # with an RSA-2048 certificate (openssl req), as many sites have

Not a test (the tests assert the policy: tests/test_https.py); this lists the offer for the issue's note.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

from demo.node_process import NodeProcess
from tests.tls_certs import make_tls_files

TLS13_SUITES = ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256",
                "TLS_AES_128_CCM_SHA256", "TLS_AES_128_CCM_8_SHA256"]  # fmt: skip


def _handshake(port: int, ca: Path, *args: str) -> str | None:
    """The negotiated "TLSvX, Cipher is Y", or None when the node refused."""
    done = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(ca), *args],
        input="", capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    line = next((x for x in (done.stdout + done.stderr).splitlines() if x.startswith("New, ")), "")
    return None if not line or "(NONE)" in line else line.removeprefix("New, ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rsa", action="store_true", help="an RSA-2048 server certificate instead of ECDSA P-256")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ainode-https-offer-") as tmp:
        work = Path(tmp)
        if args.rsa:
            cert, key = work / "rsa.pem", work / "rsa.key"
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                            "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                            "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)  # fmt: skip
            ca = cert
        else:
            files = make_tls_files(work / "certs")
            cert, key, ca = files.server_cert, files.server_key, files.ca_cert
        http = {"tls": {"cert_file": str(cert), "key_file": str(key)}}
        with NodeProcess(work / "node", {"workers": {"processes": 0}}, http=http) as node:
            assert node.http_port is not None
            port = node.http_port
            for flag in ("-tls1", "-tls1_1", "-tls1_2", "-tls1_3"):
                # SECLEVEL=0 on our side: a refusal is then the node's, not this openssl's own policy.
                extra = ["-cipher", "DEFAULT:@SECLEVEL=0"] if flag in ("-tls1", "-tls1_1") else []
                print(f"{flag:8} {_handshake(port, ca, flag, *extra) or 'refused'}")
            every = subprocess.run(["openssl", "ciphers", "ALL:COMPLEMENTOFALL:@SECLEVEL=0"],
                                   capture_output=True, text=True, check=True).stdout.strip().split(":")  # fmt: skip
            accepted = [c for c in every if _handshake(port, ca, "-tls1_2", "-cipher", c + ":@SECLEVEL=0")]
            print(f"TLS 1.2 suites accepted ({len(accepted)} of {len(every)} tried): {', '.join(accepted)}")
            suites = [s for s in TLS13_SUITES if _handshake(port, ca, "-tls1_3", "-ciphersuites", s)]
            print(f"TLS 1.3 suites accepted ({len(suites)} of {len(TLS13_SUITES)} tried): {', '.join(suites)}")


if __name__ == "__main__":
    main()
