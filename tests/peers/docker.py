"""A Docker daemon of the test's own (Debian's docker.io), and a Debian base image made here.

No image registry is reachable where the tests run, and the host's networking must stay as it is, so:

- ``DockerDaemon`` starts ``dockerd`` as root with its own data root, exec root and socket, no bridge and no
  iptables rules; containers use the host's network (every port on loopback). ``stop()`` removes every
  container and volume it made, stops the daemon and deletes its data root (images included).
- ``debian_base_image()`` makes ``ainode-test/debian:bookworm`` with ``debootstrap --variant=minbase`` from the
  Debian mirror and ``docker import``; the root file system is kept as a tarball under ``.peers/docker/``,
  one per day, so reruns skip the debootstrap.

Usage::

    with DockerDaemon(tmp_path / "docker") as docker:
        base = debian_base_image(docker)
        docker.run("build", "--network", "host", "--build-arg", f"BASE_IMAGE={base}", ...)
"""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from demo.netutil import stop_process, wait_until

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".peers" / "docker"
DOCKERD_BIN = "/usr/sbin/dockerd"
DOCKER_BIN = "/usr/bin/docker"
DEBOOTSTRAP_BIN = "/usr/sbin/debootstrap"
DEBIAN_MIRROR = os.environ.get("AINODE_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")
BASE_IMAGE = "ainode-test/debian:bookworm"
# This machine's CA bundle, copied into the base image for pip: the sandbox's egress re-signs TLS.
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
IMAGE_CA_BUNDLE = "/etc/ssl/host-ca-certificates.crt"


def compose_command() -> list[str] | None:
    """Debian's docker-compose (v1), or the compose plugin (``docker compose``) where that is installed."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    plugin = subprocess.run([DOCKER_BIN, "compose", "version"], capture_output=True, check=False)
    return [DOCKER_BIN, "compose"] if plugin.returncode == 0 else None


def docker_available() -> bool:
    return (
        os.geteuid() == 0
        and all(Path(b).exists() for b in (DOCKERD_BIN, DOCKER_BIN, DEBOOTSTRAP_BIN))
        and compose_command() is not None
    )


class DockerDaemon:
    def __init__(self, workdir: Path) -> None:
        # The exec root holds unix sockets (path length limit 108): keep it short, outside the test's folder.
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.exec_root = Path(tempfile.mkdtemp(prefix="dk-", dir="/tmp"))
        self.data_root = workdir / "data"
        self.socket = self.exec_root / "docker.sock"
        self.log_path = workdir / "dockerd.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{self.socket}", "DOCKER_BUILDKIT": "0"}

    def start(self, timeout_s: float = 60) -> DockerDaemon:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                DOCKERD_BIN,
                "--data-root", str(self.data_root),
                "--exec-root", str(self.exec_root),
                "--pidfile", str(self.exec_root / "dockerd.pid"),
                "-H", f"unix://{self.socket}",
                # Leave the host's networking alone: no docker0 bridge, no iptables rules.
                "--bridge=none", "--iptables=false", "--ip6tables=false",
            ],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )  # fmt: skip

        def answers() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"dockerd exited early: {self.log_path.read_text()[-3000:]}")
            return self.socket.exists() and self.run("version", check=False).returncode == 0

        wait_until(answers, timeout_s, "dockerd to answer")
        return self

    def run(self, *args: str, check: bool = True, timeout_s: float = 600, input_path: Path | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
        return self.command([DOCKER_BIN, *args], check=check, timeout_s=timeout_s, input_path=input_path, cwd=cwd)

    def command(self, argv: list[str], *, check: bool = True, timeout_s: float = 600, input_path: Path | None = None,
                cwd: Path | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
        """Any docker client (docker, docker-compose) against this daemon."""
        stdin = input_path.open("rb") if input_path else subprocess.DEVNULL
        try:
            proc = subprocess.run(argv, stdin=stdin, capture_output=True, timeout=timeout_s, env=self.env, cwd=cwd)
        finally:
            if input_path:
                stdin.close()  # type: ignore[union-attr]
        out = subprocess.CompletedProcess(argv, proc.returncode, proc.stdout.decode(errors="replace"),
                                          proc.stderr.decode(errors="replace"))  # fmt: skip
        if check and out.returncode != 0:
            command = " ".join(argv[:4])
            raise RuntimeError(f"{command}... exited {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
        return out

    def lines(self, *args: str) -> list[str]:
        return [line for line in self.run(*args).stdout.splitlines() if line.strip()]

    def stop(self) -> None:
        """Remove every container and volume, stop the daemon, delete its data (images included)."""
        if self.process is not None and self.process.poll() is None:
            containers = self.lines("ps", "-aq")
            if containers:
                self.run("rm", "-f", "-v", *containers, check=False)
            volumes = self.lines("volume", "ls", "-q")
            if volumes:
                self.run("volume", "rm", "-f", *volumes, check=False)
            self.run("network", "prune", "-f", check=False)
        stop_process(self.process, timeout_s=30)
        self.process = None
        _unmount_below(self.exec_root, self.data_root)
        shutil.rmtree(self.data_root, ignore_errors=True)
        shutil.rmtree(self.exec_root, ignore_errors=True)

    def __enter__(self) -> DockerDaemon:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _unmount_below(*roots: Path) -> None:
    """What dockerd leaves mounted after it exits (its network namespace file in the exec root)."""
    mounted = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    inside = [m for m in mounted if any(m == str(r) or m.startswith(f"{r}/") for r in roots)]
    for mount_point in sorted(inside, key=len, reverse=True):
        subprocess.run(["umount", mount_point], check=False, capture_output=True)


def _rootfs_tarball(timings: dict[str, float]) -> Path:
    """Debian bookworm minbase as a tarball, made once a day (debootstrap takes ~40 s and the mirror's time)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    tarball = CACHE / f"debian-bookworm-minbase-{datetime.date.today():%Y%m%d}.tar"
    if tarball.exists():
        return tarball
    for old in CACHE.glob("debian-bookworm-minbase-*.tar"):
        old.unlink()
    with tempfile.TemporaryDirectory(prefix="debootstrap-", dir=CACHE) as tmp:
        root = Path(tmp) / "root"
        started = time.monotonic()
        proc = subprocess.run(
            [DEBOOTSTRAP_BIN, "--variant=minbase", "bookworm", str(root), DEBIAN_MIRROR],
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"debootstrap failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        timings["debootstrap_s"] = round(time.monotonic() - started, 1)
        partial = tarball.with_suffix(".part")
        subprocess.run(["tar", "-C", str(root), "-cf", str(partial), "."], check=True, timeout=300)
        partial.rename(tarball)
    return tarball


def debian_base_image(docker: DockerDaemon, timings: dict[str, float]) -> str:
    """``ainode-test/debian:bookworm`` in this daemon; adds ``debootstrap_s`` and ``import_s`` to ``timings``."""
    tarball = _rootfs_tarball(timings)
    started = time.monotonic()
    docker.run("import", "--change", 'CMD ["/bin/bash"]', "-", f"{BASE_IMAGE}-rootfs", input_path=tarball)
    # The host's CA bundle beside Debian's own (apt's ca-certificates would regenerate that one).
    with tempfile.TemporaryDirectory(prefix="base-", dir=docker.workdir) as ctx:
        shutil.copy(HOST_CA_BUNDLE, Path(ctx) / "host-ca-certificates.crt")
        (Path(ctx) / "Dockerfile").write_text(
            f"FROM {BASE_IMAGE}-rootfs\n"
            f"COPY host-ca-certificates.crt {IMAGE_CA_BUNDLE}\n"
            f"ENV PIP_CERT={IMAGE_CA_BUNDLE}\n"
        )
        docker.run("build", "-q", "-t", BASE_IMAGE, ctx)
    timings["import_s"] = round(time.monotonic() - started, 1)
    return BASE_IMAGE
