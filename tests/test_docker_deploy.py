"""deploy/ as a site runs it, in Docker: the three images build, `deploy/docker-compose.yml` comes up, the real
Philips chest CT uploaded to the Orthanc container is auto-routed (Lua) to the node container, and its SEG, SR
and Grad-CAM SC come back into Orthanc once each, also when the node container is restarted mid-job; the OHIF
container shows the study in headless Chromium.

Here no image registry is reachable and the host's networking must stay as it is (tests/peers/docker.py):
- the images are built FROM a debootstrapped Debian (``BASE_IMAGE``): the node's deploy/Dockerfile as sites
  build it, Orthanc and OHIF from deploy/orthanc/Dockerfile and deploy/ohif/Dockerfile, the test stand-ins of
  the official orthancteam/orthanc and ohif/app images the compose file names;
- the compose file is the one in deploy/, with what host networking requires (``host_network_compose``): no
  published ports and no hostname (Docker refuses both with ``network_mode: host``), the local images, and
  its mounted configuration files rewritten for loopback and free ports (``site_configs``).
Build and run times, and image sizes, go to artifacts/docker/timings.json (benchmarks/docker_deploy.md).
"""

from __future__ import annotations

import configparser
import json
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
import yaml

from demo.paths import PHILIPS_CT
from tests.peers.docker import DockerDaemon, compose_command, debian_base_image
from tests.peers.net import free_port, wait_until
from tests.peers.ohif import OHIF_DIST, run_browser_script

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.slow, pytest.mark.needs("docker", "philips-ct", "ohif")]

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
WHEELS = DEPLOY / "wheels"
ARTIFACTS = REPO / "artifacts" / "docker"
BROWSER_SCRIPT = Path(__file__).resolve().parent / "browser" / "ohif_study_listed.js"
TORCH_VERSION = "2.13.0"  # deploy/Dockerfile's TORCH_VERSION (checked below)
PROJECT = "ainode-e2e"
IMAGES = {"orthanc": "ainode-test/orthanc", "ainode": "ainode-test/ainode", "ohif": "ainode-test/ohif"}
NODE_CONFIG = "/etc/ainode/node.yaml"  # where deploy/docker-compose.yml mounts node.yaml
RESULT_DEADLINE_S = 600
RESULT_MODALITIES = ("SEG", "SR", "OT")


@dataclass
class Ports:
    orthanc_http: int = field(default_factory=free_port)
    orthanc_dicom: int = field(default_factory=free_port)
    node_dicom: int = field(default_factory=free_port)
    node_http: int = field(default_factory=free_port)
    ohif_http: int = field(default_factory=free_port)


@dataclass
class Site:
    docker: DockerDaemon
    compose: list[str]  # the compose command with its -f and -p
    ports: Ports
    timings: dict[str, Any]

    @property
    def orthanc_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.orthanc_http}"

    @property
    def ohif_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.ohif_http}"

    def run_compose(self, *args: str, timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
        return self.docker.command([*self.compose, *args], timeout_s=timeout_s)

    def container(self, service: str) -> str:
        return self.run_compose("ps", "-q", service).stdout.strip()

    def health(self, service: str) -> str:
        status = self.docker.run("inspect", "--format", "{{.State.Health.Status}}", self.container(service))
        return status.stdout.strip()

    def node_status(self) -> dict[str, Any]:
        """`ainode status --json` run inside the node container (as its user, on its volume)."""
        out = self.docker.run("exec", self.container("ainode"), "ainode", "status", "--json", "--config", NODE_CONFIG,
                              check=False, timeout_s=120)  # fmt: skip
        status: dict[str, Any] = json.loads(out.stdout) if out.returncode == 0 else {}
        return status

    def series_of_study(self, study_uid: str) -> dict[str, list[dict[str, Any]]]:
        """The study's series in the Orthanc container by modality (QIDO-RS)."""
        r = httpx.get(f"{self.orthanc_url}/dicom-web/studies/{study_uid}/series", timeout=30)
        by_modality: dict[str, list[dict[str, Any]]] = {}
        for series in r.json() if r.status_code == 200 else []:
            by_modality.setdefault(series["00080060"]["Value"][0], []).append(series)
        return by_modality


def ensure_torch_wheel(timings: dict[str, Any]) -> None:
    """The CPU torch wheel in deploy/wheels/ (PyPI's torch pulls GBs of CUDA packages): downloaded once."""
    if list(WHEELS.glob(f"torch-{TORCH_VERSION}*.whl")):
        return
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", f"torch=={TORCH_VERSION}",
                    "-d", str(WHEELS)], check=True, timeout=900)  # fmt: skip
    timings["torch_wheel_download_s"] = round(time.monotonic() - started, 1)


def build_images(docker: DockerDaemon, base: str, timings: dict[str, Any]) -> None:
    """One build of each image, on the host's network (PyPI, the Debian mirror); layers cached within the run."""
    builds = {
        "orthanc": (DEPLOY / "orthanc" / "Dockerfile", DEPLOY / "orthanc"),
        "ohif": (DEPLOY / "ohif" / "Dockerfile", OHIF_DIST.parent),  # the npm package's dist/ (install-peers.sh)
        "ainode": (DEPLOY / "Dockerfile", REPO),
    }
    for name, (dockerfile, context) in builds.items():
        started = time.monotonic()
        docker.run("build", "--network", "host", "--build-arg", f"BASE_IMAGE={base}", "-f", str(dockerfile),
                   "-t", IMAGES[name], str(context), timeout_s=1800)  # fmt: skip
        timings[f"build_{name}_s"] = round(time.monotonic() - started, 1)
        size = int(docker.run("image", "inspect", "--format", "{{.Size}}", IMAGES[name]).stdout)
        timings[f"image_{name}_mb"] = round(size / 1e6)


def node_yaml(ports: Ports) -> str:
    """deploy/node.yaml with its ports, and its peers on 127.0.0.1."""
    node = yaml.safe_load((DEPLOY / "node.yaml").read_text())
    node["dicom"].update(port=ports.node_dicom, bind_address="127.0.0.1")
    viewer = f"http://127.0.0.1:{ports.ohif_http}/viewer?StudyInstanceUIDs={{study_uid}}"
    node["http"].update(port=ports.node_http, bind_address="127.0.0.1", viewer_url_template=viewer)
    node["destinations"]["pacs"].update(host="127.0.0.1", port=ports.orthanc_dicom)
    node["destinations"]["pacs-web"]["url"] = f"http://127.0.0.1:{ports.orthanc_http}/dicom-web"
    return yaml.safe_dump(node, sort_keys=False)


def site_configs(workdir: Path, ports: Ports) -> dict[str, Path]:
    """deploy/'s mounted configuration files, for host networking: peers on 127.0.0.1 at free ports.

    Returns {path in the container: the rewritten file}. Everything else is as deploy/ has it.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    orthanc = json.loads((DEPLOY / "orthanc" / "orthanc.json").read_text())
    orthanc["HttpPort"], orthanc["DicomPort"] = ports.orthanc_http, ports.orthanc_dicom
    orthanc["DicomModalities"]["node"] = ["AINODE", "127.0.0.1", ports.node_dicom]
    # On the host's network every client is local: Orthanc (no authentication here) answers only those.
    orthanc["RemoteAccessAllowed"] = False
    orthanc["StableAge"] = 3  # deploy/ waits 30 s after the last instance; the test does not need to
    (workdir / "orthanc.json").write_text(json.dumps(orthanc, indent=2))

    (workdir / "node.yaml").write_text(node_yaml(ports))

    nginx = (DEPLOY / "ohif" / "nginx.conf").read_text()
    nginx, listens = re.subn(r"listen 80;", f"listen 127.0.0.1:{ports.ohif_http};", nginx)
    nginx, proxies = re.subn(r"http://orthanc:8042/", f"http://127.0.0.1:{ports.orthanc_http}/", nginx)
    assert (listens, proxies) == (1, 1), "deploy/ohif/nginx.conf: its listen or proxy_pass line changed"
    (workdir / "nginx.conf").write_text(nginx)
    for path in workdir.iterdir():
        path.chmod(0o644)  # read by the containers' own users
    return {
        "/etc/orthanc/orthanc.json": workdir / "orthanc.json",
        NODE_CONFIG: workdir / "node.yaml",
        "/etc/nginx/conf.d/default.conf": workdir / "nginx.conf",
    }


def host_network_compose(configs: dict[str, Path], ports: Ports) -> dict[str, Any]:
    """deploy/docker-compose.yml with what host networking needs; the GPU node (NVIDIA runtime) left out."""
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    compose.pop("name", None)  # the project name comes from -p (Debian's docker-compose 1.29 predates `name`)
    services = {name: s for name, s in compose["services"].items() if "gpu" not in s.get("profiles", [])}
    assert set(services) == set(IMAGES), f"deploy/docker-compose.yml has other services: {sorted(services)}"
    for name, service in services.items():
        for key in ("ports", "hostname", "build"):
            service.pop(key, None)
        service["network_mode"] = "host"
        service["image"] = IMAGES[name]
        mounts = []
        for volume in service.get("volumes", []):
            source, target, *mode = volume.split(":")
            if target in configs:
                source = str(configs[target])
            elif source.startswith("./"):
                source = str(DEPLOY / source)
            mounts.append(":".join([source, target, *mode]))
        service["volumes"] = mounts
    services["ainode"].setdefault("environment", {})["AINODE_READYZ_URL"] = (
        f"http://127.0.0.1:{ports.node_http}/readyz"  # the image's HEALTHCHECK, at this http.port
    )
    compose["services"] = services
    return compose


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    workdir = tmp_path_factory.mktemp("docker-site")
    timings: dict[str, Any] = {}
    started = time.monotonic()
    ensure_torch_wheel(timings)
    ports = Ports()
    configs = site_configs(workdir / "config", ports)
    compose_file = workdir / "docker-compose.yml"
    compose_file.write_text(yaml.safe_dump(host_network_compose(configs, ports), sort_keys=False))
    compose = [*(compose_command() or []), "-f", str(compose_file), "-p", PROJECT]
    docker = DockerDaemon(workdir / "docker")
    try:
        docker.start()
        base = debian_base_image(docker, timings)
        build_images(docker, base, timings)
        site = Site(docker, compose, ports, timings)
        up = time.monotonic()
        site.run_compose("up", "-d")
        wait_until(lambda: site.health("ainode") == "healthy", 180, "the node container to be healthy", interval_s=1)
        timings["compose_up_to_healthy_s"] = round(time.monotonic() - up, 1)
        yield site
        down = time.monotonic()
        site.run_compose("down", "-v", "--remove-orphans")
        timings["compose_down_s"] = round(time.monotonic() - down, 1)
        assert docker.lines("ps", "-aq") == [] and docker.lines("volume", "ls", "-q") == []
    finally:
        docker.stop()
        timings["module_wall_s"] = round(time.monotonic() - started, 1)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "timings.json").write_text(json.dumps(timings, indent=2))
    # Nothing left behind: no daemon, no data root.
    assert docker.process is None and not docker.data_root.exists() and not docker.exec_root.exists()


def test_dockerfile_pins_the_torch_the_test_provides() -> None:
    assert f"ARG TORCH_VERSION={TORCH_VERSION}" in (DEPLOY / "Dockerfile").read_text()


def test_node_container_runs_as_its_user_with_read_only_config_and_data_volume(site: Site) -> None:
    node = site.container("ainode")
    assert site.docker.run("exec", node, "id", "-un").stdout.strip() == "ainode"
    info = json.loads(site.docker.run("inspect", node).stdout)[0]
    mounts = {m["Destination"]: m for m in info["Mounts"]}
    assert mounts[NODE_CONFIG]["RW"] is False
    data = mounts["/var/lib/ainode"]
    assert data["Type"] == "volume" and data["Name"] == f"{PROJECT}_ainode-data"
    assert site.docker.run("exec", node, "sh", "-c", f"echo x >> {NODE_CONFIG}", check=False).returncode != 0
    image = json.loads(site.docker.run("image", "inspect", IMAGES["ainode"]).stdout)[0]["Config"]
    assert "/var/lib/ainode" in image["Volumes"]
    assert any("AINODE_READYZ_URL" in part for part in image["Healthcheck"]["Test"])
    # The HEALTHCHECK's URL answers: /readyz, from the container's loopback (no credentials in node.yaml).
    ready = httpx.get(f"http://127.0.0.1:{site.ports.node_http}/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json()["ready"] is True


def _jobs(site: Site) -> list[dict[str, Any]]:
    return list(site.node_status().get("recent_jobs", []))


def test_ct_to_orthanc_container_results_back_once_across_a_node_restart(site: Site) -> None:
    files = sorted(p for p in PHILIPS_CT.rglob("*") if p.is_file())
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    started = time.monotonic()
    for path in files:  # as a modality would: into the PACS, which auto-routes the stable study (Lua)
        r = httpx.post(f"{site.orthanc_url}/instances", content=path.read_bytes(), timeout=60)
        assert r.status_code == 200, r.text
    assert len(files) == 64

    def lung_nodule_running() -> bool:
        return any(j["pipeline"] == "lung-nodule" and j["state"] == "running" for j in _jobs(site))

    wait_until(lung_nodule_running, 300, "the node container to run the lung-nodule job", interval_s=0.5)
    site.timings["upload_to_job_running_s"] = round(time.monotonic() - started, 1)
    assert site.series_of_study(study_uid).keys() == {"CT"}, "results before the restart: restart too late"
    site.run_compose("restart", "ainode")  # SIGTERM mid-job (compose's 10 s grace, then SIGKILL)
    wait_until(lambda: site.health("ainode") == "healthy", 180, "the node container healthy again", interval_s=1)

    def delivered() -> bool:
        status = site.node_status()
        deliveries = status.get("deliveries_by_state", {})
        return bool(deliveries) and set(deliveries) == {"sent"} and set(status["jobs_by_state"]) == {"done"}

    wait_until(delivered, RESULT_DEADLINE_S, "every result delivered to the Orthanc container", interval_s=2)
    site.timings["upload_to_results_delivered_s"] = round(time.monotonic() - started, 1)
    status = site.node_status()
    found = site.series_of_study(study_uid)
    # SEG, SR and the Grad-CAM SCs: one series each, every object the node made in Orthanc once, nothing more.
    assert sorted(found) == ["CT", "OT", "SEG", "SR"]
    assert all(len(found[m]) == 1 for m in RESULT_MODALITIES), {m: len(found[m]) for m in RESULT_MODALITIES}
    in_pacs = sum(int(found[m][0]["00201209"]["Value"][0]) for m in RESULT_MODALITIES)
    assert in_pacs == status["deliveries_by_state"]["sent"]
    assert int(found["SR"][0]["00201209"]["Value"][0]) == 1
    assert int(found["CT"][0]["00201209"]["Value"][0]) == 64
    # The node got the whole series once (Orthanc's Lua sent it once; the restart lost none of it).
    assert [s["instance_count"] for s in status["series"]] == [64]
    lung = [j for j in status["recent_jobs"] if j["pipeline"] == "lung-nodule"]
    assert len(lung) == 1 and lung[0]["attempts"] >= 2, lung  # the interrupted run was run again
    orthanc_log = site.docker.run("logs", site.container("orthanc")).stderr
    assert orthanc_log.count("CT series sent to node: 1") == 1


def test_ohif_container_shows_the_study_with_the_results(site: Site) -> None:
    study_uid = str(pydicom.dcmread(sorted(PHILIPS_CT.rglob("*.dcm"))[0], stop_before_pixels=True).StudyInstanceUID)
    wait_until(lambda: set(RESULT_MODALITIES) <= set(site.series_of_study(study_uid)), RESULT_DEADLINE_S,
               "the results in Orthanc", interval_s=2)  # fmt: skip
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert httpx.get(f"{site.ohif_url}/app-config.js", timeout=10).status_code == 200
    started = time.monotonic()
    proc = run_browser_script(BROWSER_SCRIPT, [site.ohif_url, study_uid, str(ARTIFACTS), "CT", *RESULT_MODALITIES],
                              timeout_s=420)  # fmt: skip
    site.timings["ohif_check_s"] = round(time.monotonic() - started, 1)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, f"browser script gave no report:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    report = json.loads(lines[-1])
    assert report["ok"], f"OHIF check failed: {report.get('error')}\n{report.get('failureText', '')[:1500]}"
    assert {"CT", *RESULT_MODALITIES} <= set(report["modalities"])
    assert report["pageErrors"] == [], report["pageErrors"]
    assert Path(report["screenshot"]).stat().st_size > 10_000


def _unit_service_section(path: Path) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    parser.read(path)
    return dict(parser["Service"])


def test_systemd_unit_command_runs_as_its_user_in_the_node_image(site: Site, tmp_path: Path) -> None:
    """deploy/ainode.service's ExecStart, as its User, on the install layout the README gives (the image's)."""
    service = _unit_service_section(DEPLOY / "ainode.service")
    command = shlex.split(service["ExecStart"])
    assert command[:2] == ["/opt/ainode/venv/bin/ainode", "serve"] and service["User"] == "ainode"
    config_path = command[command.index("--config") + 1]
    ports = Ports(orthanc_http=site.ports.orthanc_http, orthanc_dicom=site.ports.orthanc_dicom,
                  ohif_http=site.ports.ohif_http)  # fmt: skip  # its own DICOM and HTTP ports beside the compose node
    config = tmp_path / "node.yaml"
    config.write_text(node_yaml(ports))
    config.chmod(0o644)
    container = site.docker.run(
        "run", "-d", "--network", "host", "--user", service["User"], "-v", f"{config}:{config_path}:ro",
        "--workdir", service["WorkingDirectory"], "--entrypoint", command[0], IMAGES["ainode"], *command[1:],
    ).stdout.strip()  # fmt: skip
    try:

        def ready() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{ports.node_http}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, 120, "the unit's command to serve /readyz", interval_s=1)
    finally:
        site.docker.run("rm", "-f", "-v", container)
