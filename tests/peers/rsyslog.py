"""rsyslog from Debian as the audit record repository of the tests: a foreground process on loopback with
its own config, listening on UDP (imudp) and on TLS (imtcp with the gtls driver, RFC 5425 octet counting),
writing every message it receives to a file as ``INPUTNAME RAWMSG`` lines."""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import TracebackType

from tests.peers.net import free_port, port_open, wait_until
from tests.tls_certs import TlsFiles

RSYSLOGD = "/usr/sbin/rsyslogd"


def rsyslog_available() -> bool:
    """rsyslogd and its GnuTLS network driver (Debian packages rsyslog and rsyslog-gnutls)."""
    return Path(RSYSLOGD).exists() and any(Path("/usr/lib").glob("*/rsyslog/lmnsd_gtls.so"))


class Rsyslog:
    def __init__(self, folder: Path, tls: TlsFiles, *, require_client_cert: bool = False) -> None:
        """``require_client_cert``: the TLS input takes only senders with a certificate of the test CA."""
        self.folder = folder
        self.udp_port, self.tls_port = free_port(), free_port()
        self.received = folder / "received.log"
        work = folder / "work"
        work.mkdir(parents=True, exist_ok=True)
        auth_mode = "x509/certvalid" if require_client_cert else "anon"
        self.config = folder / "rsyslog.conf"
        self.config.write_text(
            f"""
global(workDirectory="{work}" maxMessageSize="64k"
       DefaultNetstreamDriver="gtls"
       DefaultNetstreamDriverCAFile="{tls.ca_cert}"
       DefaultNetstreamDriverCertFile="{tls.server_cert}"
       DefaultNetstreamDriverKeyFile="{tls.server_key}")
module(load="imudp")
module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.AuthMode="{auth_mode}")
input(type="imudp" address="127.0.0.1" port="{self.udp_port}")
input(type="imtcp" address="127.0.0.1" port="{self.tls_port}")
template(name="raw" type="string" string="%inputname% %rawmsg%\\n")
action(type="omfile" file="{self.received}" template="raw" flushOnTXEnd="on")
"""
        )
        self.log = folder / "rsyslogd.out"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Rsyslog:
        out = self.log.open("ab")
        self.process = subprocess.Popen(
            [RSYSLOGD, "-n", "-f", str(self.config), "-i", str(self.folder / "rsyslogd.pid")],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        # The UDP input has nothing to probe; the TLS one opens with it.
        wait_until(lambda: self._alive() and port_open(self.tls_port), 20, "rsyslogd to listen")
        return self

    def _alive(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"rsyslogd exited: {self.log.read_text(errors='replace')[-2000:]}")
        return True

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def messages(self, input_name: str) -> list[str]:
        """The raw syslog messages received on ``imudp`` or ``imtcp``."""
        if not self.received.exists():
            return []
        prefix = input_name + " "
        return [
            line[len(prefix) :] for line in self.received.read_text("utf-8").splitlines() if line.startswith(prefix)
        ]


__all__ = ["Rsyslog", "rsyslog_available"]
