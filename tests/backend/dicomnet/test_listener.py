"""The DICOM listener as a process, driven by DCMTK's echoscu / storescu (real association,
real files); the classification is out of scope here (no worker), only receiving."""

from __future__ import annotations

import contextlib
import io
import socket
from pathlib import Path
from typing import Any

import pydicom
import pytest

from tests.backend.dicomnet.conftest import Listener, echo, store, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def hospital_ae(user: Any) -> str:
    from backend.dicomnet.services import dicom_config_update

    dicom_config_update(user=user, calling_ae_titles=["MODALITY1"], destination=None)
    return "MODALITY1"


def received(hospital: Any) -> dict[str, int]:
    from backend.dicomnet.models import ReceivedInstance, ReceivedStudy

    return {"studies": ReceivedStudy.objects.filter(hospital=hospital).count(),
            "instances": ReceivedInstance.objects.filter(
                received_study__hospital=hospital).count()}


def test_echo_from_a_configured_ae_succeeds(listener: Listener, hospital_ae: str) -> None:
    result = echo(listener.port, hospital_ae)
    assert result.returncode == 0, result.stderr


def test_stranger_ae_is_rejected_at_association(listener: Listener, hospital_ae: str,
                                                dicom_files: list[Path], user: Any) -> None:
    result = echo(listener.port, "STRANGER")
    assert result.returncode != 0
    assert b"Association Rejected" in result.stderr + result.stdout
    sent = store(listener.port, "STRANGER", dicom_files[:1])
    assert sent.returncode != 0
    assert received(user.hospital) == {"studies": 0, "instances": 0}


def test_no_configured_ae_rejects_everyone(listener: Listener, db: None) -> None:
    result = echo(listener.port, "ANYONE")
    assert b"Association Rejected" in result.stderr + result.stdout


def test_instances_are_grouped_by_study_and_resends_are_not_stored_twice(
        listener: Listener, hospital_ae: str, dicom_files: list[Path], user: Any) -> None:
    from backend.dicomnet.models import ReceivedInstance

    result = store(listener.port, hospital_ae, dicom_files)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    headers = [pydicom.dcmread(f, force=True, stop_before_pixels=True) for f in dicom_files]
    # Two of the shared files are one instance in two encodings (same SOP Instance UID).
    expected = {"studies": len({str(h.StudyInstanceUID) for h in headers}),
                "instances": len({str(h.SOPInstanceUID) for h in headers})}
    wait_until(lambda: received(user.hospital) == expected, timeout=30)
    answered = listener.resends_answered()
    again = store(listener.port, hospital_ae, dicom_files)
    assert again.returncode == 0
    wait_until(lambda: listener.resends_answered() >= answered + len(dicom_files), timeout=30)
    assert received(user.hospital) == expected
    stored = ReceivedInstance.objects.first()
    assert stored is not None
    # The file is stored as received, with a file meta header (readable by any DICOM tool).
    with stored.file.open("rb") as handle:
        dataset = pydicom.dcmread(io.BytesIO(handle.read()))
    assert str(dataset.SOPInstanceUID) == stored.sop_instance_uid


def test_our_own_result_objects_are_not_ingested(listener: Listener, hospital_ae: str,
                                                 dicom_files: list[Path], user: Any,
                                                 tmp_path: Path) -> None:
    # A secondary capture we made (the PACS routes it back): acknowledged, never stored.
    dataset = pydicom.dcmread(dicom_files[1])
    dataset.Manufacturer = "PneumoScan"
    dataset.SOPInstanceUID = pydicom.uid.generate_uid()
    ours = tmp_path / "ours.dcm"
    dataset.save_as(ours)
    result = store(listener.port, hospital_ae, [ours])
    assert result.returncode == 0, result.stderr
    assert received(user.hospital)["instances"] == 0


def test_garbage_on_the_port_and_a_file_without_uids_do_not_stop_the_listener(
        listener: Listener, hospital_ae: str, dicom_files: list[Path], tmp_path: Path,
        user: Any) -> None:
    with socket.create_connection(("127.0.0.1", listener.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(range(256)) * 8)
        sock.settimeout(5)
        with contextlib.suppress(OSError):
            sock.recv(1024)
    dataset = pydicom.dcmread(dicom_files[1])
    del dataset.StudyInstanceUID
    broken = tmp_path / "no-study-uid.dcm"
    dataset.save_as(broken)
    result = store(listener.port, hospital_ae, [broken])
    # storescu reports the refusal (status A900) and the listener carries on.
    assert b"A900" in result.stderr + result.stdout or result.returncode != 0
    assert listener.process.poll() is None
    assert echo(listener.port, hospital_ae).returncode == 0
    assert received(user.hospital)["instances"] == 0
