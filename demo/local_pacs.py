"""A local Orthanc (the Debian binary, DICOMweb plugin) on loopback: the demo's PACS and the tests' peer.

Usage::

    with LocalOrthanc(tmp_path, modalities={"node": ("AINODE", "127.0.0.1", 11112)}) as orthanc:
        orthanc.upload(path)            # REST POST /instances
        orthanc.get("/studies")         # REST JSON
        orthanc.dicomweb_url            # http://127.0.0.1:PORT/dicom-web
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from demo.netutil import free_port, nodelay_env, port_open, stop_process, wait_until

ORTHANC_BIN = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def orthanc_available() -> bool:
    return shutil.which(ORTHANC_BIN) is not None and Path(DICOMWEB_PLUGIN).exists()


class LocalOrthanc:
    def __init__(
        self,
        workdir: Path,
        *,
        aet: str = "ORTHANC",
        name: str = "AINODE-LOCAL-PACS",
        modalities: dict[str, tuple[str, str, int]] | None = None,
        lua_script: str | None = None,
        stable_age_s: int = 2,
        extra_config: dict[str, Any] | None = None,
        http_port: int | None = None,
        dicom_port: int | None = None,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        """``credentials``: (user, password) turns on HTTP basic auth; the helpers below then use it."""
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.aet = aet
        self.http_port = http_port or free_port()
        self.dicom_port = dicom_port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        config: dict[str, Any] = {
            "Name": name,
            "StorageDirectory": str(workdir / "db"),
            "IndexDirectory": str(workdir / "db"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [DICOMWEB_PLUGIN],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "DicomModalities": {k: list(v) for k, v in (modalities or {}).items()},
            # Only the listed modalities may talk to Orthanc over DIMSE (like a real site).
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": False,
            "DicomCheckCalledAet": False,
            "StableAge": stable_age_s,
            "ConcurrentJobs": 2,
        }
        if lua_script is not None:
            lua_path = workdir / "autoroute.lua"
            lua_path.write_text(lua_script)
            config["LuaScripts"] = [str(lua_path)]
        self.auth: tuple[str, str] | None = credentials
        if credentials is not None:
            config["AuthenticationEnabled"] = True
            config["RegisteredUsers"] = {credentials[0]: credentials[1]}
        config.update(extra_config or {})
        self.config_path = workdir / "orthanc.json"
        self.config_path.write_text(json.dumps(config, indent=2))
        self.log_path = workdir / "orthanc.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def start(self, timeout_s: float = 30) -> LocalOrthanc:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [ORTHANC_BIN, str(self.config_path)], stdout=log, stderr=subprocess.STDOUT, env=nodelay_env()
        )

        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited early; see {self.log_path}:\n{self.log_path.read_text()[-2000:]}")
            if not port_open(self.dicom_port):
                return False
            try:
                return httpx.get(f"{self.url}/system", timeout=1, auth=self.auth).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout_s, "Orthanc to answer REST and DIMSE")
        return self

    def stop(self) -> None:
        stop_process(self.process, timeout_s=15)
        self.process = None

    def kill(self) -> None:
        """SIGKILL, as a crash or a hard maintenance stop would: ``start()`` brings it back on the same
        ports and storage."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def __enter__(self) -> LocalOrthanc:
        return self if self.process is not None else self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- REST helpers -------------------------------------------------------------------------
    def get(self, path: str) -> Any:
        r = httpx.get(f"{self.url}{path}", timeout=30, auth=self.auth)
        r.raise_for_status()
        return r.json()

    def post(self, path: str, body: Any, timeout_s: float = 120) -> Any:
        r = httpx.post(f"{self.url}{path}", json=body, timeout=timeout_s, auth=self.auth)
        r.raise_for_status()
        return r.json()

    def lookup_id(self, dicom_uid: str) -> str:
        """Orthanc's own ID of a study/series/instance UID ("" if unknown). /tools/lookup takes a plain-text body."""
        r = httpx.post(f"{self.url}/tools/lookup", content=dicom_uid, timeout=30, auth=self.auth)
        found = r.json() if r.status_code == 200 else []
        return str(found[0]["ID"]) if found else ""

    def upload(self, path: Path) -> dict[str, Any]:
        r = httpx.post(f"{self.url}/instances", content=path.read_bytes(), timeout=60, auth=self.auth)
        r.raise_for_status()
        result: dict[str, Any] = r.json()
        return result

    def upload_dir(self, folder: Path) -> int:
        count = 0
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                self.upload(p)
                count += 1
        return count

    def new_instances(self) -> list[dict[str, Any]]:
        """Orthanc's own record of arrivals, in its order: [{"seq", "date" (UTC, s), "sop_instance_uid"}].

        From ``/changes`` (NewInstance events, by sequence number) and each instance's main tags.
        """
        changes: list[dict[str, Any]] = []
        since = 0
        while True:
            page = self.get(f"/changes?since={since}&limit=1000")
            changes += [c for c in page["Changes"] if c["ChangeType"] == "NewInstance"]
            since = int(page["Last"])
            if page["Done"]:
                break
        out = []
        for change in changes:
            tags = self.get(f"/instances/{change['ID']}")["MainDicomTags"]
            out.append({"seq": change["Seq"], "date": change["Date"], "sop_instance_uid": tags["SOPInstanceUID"]})
        return out

    def instance_count(self) -> int:
        return int(self.get("/statistics")["CountInstances"])

    def series_of_study(self, study_instance_uid: str) -> list[dict[str, Any]]:
        """QIDO-RS (DICOMweb): the series Orthanc holds for a study, as DICOM JSON."""
        r = httpx.get(f"{self.dicomweb_url}/studies/{study_instance_uid}/series", timeout=30, auth=self.auth)
        if r.status_code == 204:
            return []
        r.raise_for_status()
        result: list[dict[str, Any]] = r.json()
        return result
