"""A real RabbitMQ broker for the tests (Debian's ``rabbitmq-server``): its own node name, loopback ports,
data, log and config folders (RABBITMQ_* variables), run as the ``rabbitmq`` user when we are root."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import uuid
from pathlib import Path

from tests.peers.net import free_port, port_open, wait_until

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")


def rabbitmq_available() -> bool:
    return (RABBIT_BIN / "rabbitmq-server").exists() and shutil.which("runuser") is not None


class RabbitBroker:
    """``start()`` (ready when ``rabbitmqctl await_startup`` says so), ``stop()``, ``close()``."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="ainode-rabbit-"))
        self.port = free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.nodename = f"ainode{uuid.uuid4().hex[:6]}@localhost"
        (self.root / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\nloopback_users = none\n"
            "log.console = false\nlog.file.level = warning\n"
        )
        (self.root / "enabled_plugins").write_text("[].\n")
        self.user = "rabbitmq" if os.geteuid() == 0 else None
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            for path in (self.root, self.root / "rabbitmq.conf", self.root / "enabled_plugins"):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest@127.0.0.1:{self.port}//"

    def _env(self) -> dict[str, str]:
        r = str(self.root)
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": r,
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_MNESIA_BASE": f"{r}/mnesia",
            "RABBITMQ_LOG_BASE": f"{r}/log",
            "RABBITMQ_FEATURE_FLAGS_FILE": f"{r}/feature_flags",
            "RABBITMQ_SCHEMA_DIR": f"{r}/schema",
            "RABBITMQ_GENERATED_CONFIG_DIR": f"{r}/generated",
            "RABBITMQ_ENABLED_PLUGINS_FILE": f"{r}/enabled_plugins",
            "RABBITMQ_PID_FILE": f"{r}/pid",
            "RABBITMQ_CONFIG_FILE": f"{r}/rabbitmq",
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "LANG": "C.UTF-8",
        }

    def _argv(self, *argv: str) -> list[str]:
        return ["runuser", "-u", self.user, "--", *argv] if self.user else list(argv)

    def ctl(self, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self._argv(str(RABBIT_BIN / "rabbitmqctl"), "-n", self.nodename, *args),
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )

    def start(self) -> None:
        log = open(self.root / "server.out", "ab")  # noqa: SIM115 - the server's output, kept for failures
        self._process = subprocess.Popen(
            self._argv(str(RABBIT_BIN / "rabbitmq-server")),
            env=self._env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        wait_until(lambda: port_open(self.port), 90, "RabbitMQ to listen", interval_s=0.5)
        done = self.ctl("await_startup", timeout_s=90)
        if done.returncode != 0:
            raise RuntimeError(f"RabbitMQ did not start: {done.stderr[-2000:]}")

    def stop(self) -> None:
        """Stops the broker (its queues are durable: they are back after ``start()``)."""
        if self._process is None:
            return
        self.ctl("stop", timeout_s=60)
        try:
            self._process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()
        self._process = None

    def close(self) -> None:
        try:
            self.stop()
        finally:
            for pid in self._own_epmd():
                os.kill(pid, signal.SIGTERM)
            shutil.rmtree(self.root, ignore_errors=True)

    def _own_epmd(self) -> list[int]:
        """The epmd this broker started: the one whose environment holds our ERL_EPMD_PORT."""
        found = subprocess.run(["pgrep", "-x", "epmd"], capture_output=True, text=True)
        mine = f"ERL_EPMD_PORT={self.epmd_port}".encode()
        pids = []
        for pid in found.stdout.split():
            try:
                if mine in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                    pids.append(int(pid))
            except OSError:
                continue
        return pids
