"""Sending result objects to a hospital: C-STORE to its destination AE (pynetdicom) or
STOW-RS to its DICOMweb URL (dicomweb-client)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from django.conf import settings
from pydicom.dataset import Dataset

from .models import DicomConfig

logger = logging.getLogger(__name__)


class DestinationUnreachable(Exception):
    """No association (or HTTP connection) could be made: worth retrying later."""


@dataclass(frozen=True)
class Outcome:
    ok: bool
    destination: str
    error: str = ""


def send(config: DicomConfig, datasets: Sequence[Dataset]) -> list[Outcome]:
    """One outcome per dataset; raises DestinationUnreachable when nothing could be sent."""
    if config.has_destination:
        return c_store(config.destination_ae_title, config.destination_host,
                       int(config.destination_port or 0), datasets)
    return stow_rs(config.dicomweb_url, datasets)


def c_store(ae_title: str, host: str, port: int,
            datasets: Sequence[Dataset]) -> list[Outcome]:
    """Send every dataset on one association; a refused instance fails alone."""
    from pynetdicom import AE

    where = f"{ae_title}@{host}:{port}"
    ae = AE(ae_title=settings.DICOM_AE_TITLE)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = settings.DICOM_NETWORK_TIMEOUT_S
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(sop_class, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    assoc = ae.associate(host, port, ae_title=ae_title)
    if not assoc.is_established:
        state = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "failed"
        raise DestinationUnreachable(f"association with {where} {state}")
    outcomes: list[Outcome] = []
    try:
        for dataset in datasets:
            try:
                status = assoc.send_c_store(dataset)
            except Exception as exc:  # a dataset pynetdicom cannot encode for this context
                outcomes.append(Outcome(False, where, f"not sent: {exc}"))
                continue
            code = int(getattr(status, "Status", -1)) if status else -1
            if code == 0 or (code >> 12) == 0xB:  # success, or warning (stored)
                outcomes.append(Outcome(True, where))
            elif code == -1:  # no answer: the connection went away mid-way
                outcomes.append(Outcome(False, where, "no response from the destination"))
            else:
                outcomes.append(Outcome(False, where, f"refused with status 0x{code:04X}"))
    finally:
        if assoc.is_established:
            assoc.release()
    if outcomes and all(o.error == "no response from the destination" for o in outcomes):
        raise DestinationUnreachable(f"{where} stopped answering")
    return outcomes


def stow_rs(url: str, datasets: Sequence[Dataset]) -> list[Outcome]:
    import requests
    from dicomweb_client.api import DICOMwebClient

    client = DICOMwebClient(url=url)
    try:
        client.store_instances(list(datasets))
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise DestinationUnreachable(f"{url}: {exc}") from exc
    except requests.HTTPError as exc:
        code = exc.response.status_code if exc.response is not None else 0
        if code in (408, 429) or code >= 500:
            raise DestinationUnreachable(f"{url} answered {code}") from exc
        return [Outcome(False, url, f"refused with HTTP {code}") for _ in datasets]
    return [Outcome(True, url) for _ in datasets]
