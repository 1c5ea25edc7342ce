"""A study's results as a FHIR R4 Bundle: one DiagnosticReport, one Observation per image,
and the Device (the model) that made them. Built and validated with fhir.resources (its
R4B models, which share R4's DiagnosticReport, Observation and Device)."""

from __future__ import annotations

import uuid
from typing import Any

from fhir.resources.R4B.bundle import Bundle

from backend.studies.models import Image, Study

from . import objects
from .services import image_findings

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
DATA_ABSENT = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
NOT_ANALYSED = "urn:pneumoscan:not-analysed-reason"


def _urn(*parts: str) -> str:
    return f"urn:uuid:{uuid.uuid5(objects.UID_NAMESPACE, '/'.join(parts))}"


def _probability(code: str, display: str, value: float) -> dict[str, Any]:
    return {"code": {"coding": [{"system": "urn:pneumoscan", "code": code,
                                 "display": display}], "text": display},
            "valueQuantity": {"value": round(float(value), 6), "unit": "1",
                              "system": UCUM, "code": "1"}}


def study_bundle(study: Study, images: list[Image]) -> dict[str, Any]:
    """The Bundle as JSON-ready data (validated by fhir.resources on the way out)."""
    entries: list[dict[str, Any]] = []
    devices: dict[tuple[str, str], str] = {}
    observations: list[str] = []
    for image in images:
        if image.status not in Image.FINAL_STATUSES:
            continue
        findings = image_findings(image)
        model = (findings.model_name, findings.model_version)
        if model not in devices:
            devices[model] = _urn("device", *model)
            entries.append({"fullUrl": devices[model], "resource": {
                "resourceType": "Device",
                "manufacturer": objects.MANUFACTURER,
                "deviceName": [{"name": findings.model_name, "type": "model-name"}],
                "version": [{"value": findings.model_version}],
                "type": {"text": "Pneumonia classifier (decision support software)"},
            }})
        url = _urn("observation", str(image.id), *model)
        observation: dict[str, Any] = {
            "resourceType": "Observation",
            "status": "final",
            "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": "imaging"}]}],
            "code": {"coding": [{"system": SNOMED, "code": "233604007",
                                 "display": "Pneumonia"}], "text": "Pneumonia"},
            "device": {"reference": devices[model]},
            "identifier": [{"system": "urn:pneumoscan:image", "value": str(image.id)}],
            "note": [{"text": f"Image {image.original_name}"}],
        }
        if image.sop_instance_uid:
            observation["derivedFrom"] = [{
                "identifier": {"system": "urn:dicom:uid",
                               "value": f"urn:oid:{image.sop_instance_uid}"},
                "display": "Source DICOM instance"}]
        if findings.analysed:
            present = ("52101004", "Present") if findings.pneumonia else ("2667000", "Absent")
            observation["valueCodeableConcept"] = {
                "coding": [{"system": SNOMED, "code": present[0], "display": present[1]}]}
            observation["component"] = [
                _probability("pneumonia-probability", "Calibrated probability of pneumonia",
                             findings.probability or 0.0),
                _probability("pneumonia-threshold", "Decision threshold",
                             findings.threshold or 0.0),
                *[_probability(f"{k}-probability", f"Probability of {k}", v)
                  for k, v in sorted(findings.etiology.items())],
            ]
            if findings.scope_reason:
                observation["note"].append({"text": "Outside the validated population: " +
                                            objects.REASONS.get(findings.scope_reason,
                                                                findings.scope_reason)})
        else:
            reason = findings.not_analysed_reason
            observation["dataAbsentReason"] = {
                "coding": [{"system": DATA_ABSENT, "code": "not-performed",
                            "display": "Not Performed"}],
                "text": objects.REASONS.get(reason, reason)}
        entries.append({"fullUrl": url, "resource": observation})
        observations.append(url)
    unfinished = any(image.status not in Image.FINAL_STATUSES for image in images)
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "status": "partial" if unfinished else "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074",
                                  "code": "RAD", "display": "Radiology"}]}],
        "code": {"coding": [{"system": LOINC, "code": "18748-4",
                             "display": "Diagnostic imaging study"}],
                 "text": "Chest X-ray pneumonia classification (decision support)"},
        "identifier": [{"system": "urn:pneumoscan:study", "value": str(study.id)}],
        "result": [{"reference": url} for url in observations],
        "conclusion": "Decision support only; results do not replace a clinician's reading.",
    }
    if study.finished_at:
        report["issued"] = study.finished_at.isoformat()
    uids = sorted({i.study_instance_uid for i in images if i.study_instance_uid})
    if uids:
        report["imagingStudy"] = [{"identifier": {"system": "urn:dicom:uid",
                                                  "value": f"urn:oid:{uid}"}} for uid in uids]
    entries.insert(0, {"fullUrl": _urn("report", str(study.id)), "resource": report})
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": entries}
    # Validation: a field we got wrong fails here, not in the hospital's FHIR server.
    return Bundle.model_validate(bundle).model_dump(mode="json", exclude_none=True)
