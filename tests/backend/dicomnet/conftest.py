"""Real DICOM software for the tests: an Orthanc PACS, the DICOM listener as a process, and
DCMTK's storescu / echoscu as the modality. Every port is a free one picked at run time."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from support import DICOM_DIR, REPO_ROOT, free_port, wait_for
from tests.conftest import stop_process, worker_env
from tests.worker.conftest import (  # noqa: F401  (fixtures re-exported)
    clean_redis,
    db_name,
    tiny_checkpoint,
)

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
DCMTK = shutil.which("storescu")
LISTENER_AE = "PNEUMOSCAN"
STORESCU_CFG = REPO_ROOT / "backend" / "dicomnet" / "storescu.cfg"


def need(binary: str | None, what: str) -> str:
    if not binary or not Path(binary).exists():
        pytest.skip(f"{what} is not installed (.ci/run installs it)")
    return binary


class Orthanc:
    """A private Orthanc: its own configuration, storage and free HTTP and DICOM ports; it
    can be stopped and started again on the same ports and storage."""

    def __init__(self, directory: Path, ae_title: str = "ORTHANC") -> None:
        self.dir = directory
        self.ae_title = ae_title
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.process: subprocess.Popen | None = None
        self.config = directory / "orthanc.json"
        self.config.write_text(json.dumps({
            "Name": "test-pacs", "StorageDirectory": str(directory / "db"),
            "IndexDirectory": str(directory / "db"), "HttpPort": self.http_port,
            "DicomPort": self.dicom_port, "DicomAet": ae_title, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True, "DicomAlwaysAllowEcho": True,
            "HttpServerEnabled": True, "ConcurrentJobs": 1, "LogExportedResources": False,
            # STOW-RS at /dicom-web/ when Debian's orthanc-dicomweb is installed.
            "Plugins": [str(DICOMWEB_PLUGIN)] if DICOMWEB_PLUGIN.exists() else [],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }))
        self.dicomweb_url = f"{self.url}/dicom-web"

    def start(self) -> None:
        log = (self.dir / "orthanc.log").open("ab")
        self.process = subprocess.Popen([need(ORTHANC, "Orthanc"), str(self.config)],
                                        stdout=log, stderr=subprocess.STDOUT)
        wait_for(self._answers, timeout=30, interval=0.2)

    def _answers(self) -> bool:
        try:
            return requests.get(f"{self.url}/system", timeout=2).ok
        except requests.RequestException:
            return False

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None

    def get(self, path: str) -> Any:
        response = requests.get(f"{self.url}{path}", timeout=10)
        response.raise_for_status()
        return response.json()

    def series_by_modality(self) -> list[dict[str, Any]]:
        """Every series: its modality, study UID, and instance count."""
        studies = {s["ID"]: s["MainDicomTags"]["StudyInstanceUID"]
                   for s in self.get("/studies?expand")}
        return [{"modality": s["MainDicomTags"].get("Modality", ""),
                 "study_uid": studies.get(s["ParentStudy"]),
                 "series_uid": s["MainDicomTags"].get("SeriesInstanceUID"),
                 "instances": len(s["Instances"])}
                for s in self.get("/series?expand")]


@pytest.fixture
def orthanc() -> Iterator[Orthanc]:
    directory = Path(tempfile.mkdtemp(prefix="pneumo-orthanc-"))
    server = Orthanc(directory)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(directory, ignore_errors=True)


class Listener:
    """`manage.py dicomlistener` as a process on a free port, on the test database."""

    def __init__(self, log: Path, db: str, **env: str) -> None:
        self.port = free_port()
        self.log = log
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "dicomlistener", "--port", str(self.port),
             "--bind", "127.0.0.1"],
            cwd=REPO_ROOT, env=worker_env(db, **env), stdout=log.open("ab"),
            stderr=subprocess.STDOUT)
        wait_for(self._listening, timeout=30, interval=0.2)

    def _listening(self) -> bool:
        import socket

        if self.process.poll() is not None:
            raise AssertionError(f"the listener exited: {self.log.read_text()[-2000:]}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def resends_answered(self) -> int:
        """How many instances it has acknowledged without storing (logged as each C-STORE is
        answered): the event a resend test waits on."""
        return self.log.read_text(errors="replace").count("not stored: already received")

    def stop(self) -> None:
        stop_process(self.process)


def echo(port: int, calling: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [need(shutil.which("echoscu"), "DCMTK"), "-aet", calling, "-aec", LISTENER_AE,
         "127.0.0.1", str(port)], capture_output=True, timeout=30)


def store(port: int, calling: str, files: list[Path]) -> subprocess.CompletedProcess:
    """storescu as a modality, each file in its own transfer syntax (our storescu.cfg)."""
    return subprocess.run(
        [need(DCMTK, "DCMTK"), "-xf", str(STORESCU_CFG), "PneumoScan", "-aet", calling,
         "-aec", LISTENER_AE, "127.0.0.1", str(port), *map(str, files)],
        capture_output=True, timeout=120)


@pytest.fixture
def dicom_files() -> list[Path]:
    files = sorted(DICOM_DIR.glob("*.dcm"))
    if not files:
        pytest.skip(f"no DICOM files in {DICOM_DIR}")
    return files


@pytest.fixture
def listener(db_name: str, tmp_path: Path) -> Iterator[Listener]:  # noqa: F811
    process = Listener(tmp_path / "listener.log", db_name, DICOM_STUDY_QUIET_S="1")
    yield process
    process.stop()
    print(process.log.read_text()[-3000:])


def wait_until(predicate: Any, timeout: float = 60) -> Any:
    return wait_for(predicate, timeout=timeout, interval=0.3)

