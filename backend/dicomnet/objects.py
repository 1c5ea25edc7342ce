"""DICOM result objects, built with highdicom from plain values (no Django models here).

- `build_sr`: a Comprehensive SR following TID 1500 (Measurement Report) for one source
  image: the coded finding (pneumonia present / absent), the calibrated probability and the
  threshold, the etiology probabilities, the algorithm identification (TID 4019, as the IHE
  AI Results profile asks) and a reference to the source image; an image that was not
  analysed gets an SR saying so, with a coded reason.
- `build_heatmap_sc`: a secondary-capture image of the heatmap over the radiograph with
  "NOT FOR DIAGNOSTIC USE" burned in.

Both go into the source study (same StudyInstanceUID, patient module copied from the source
by highdicom), in one new series per kind and model version. Every UID is derived from the
source UIDs and the model identity (UUID v5 under 2.25), so building an object again gives
the same UIDs and a PACS that receives it twice keeps one copy.
"""

from __future__ import annotations

import io
import uuid
import warnings
from dataclasses import dataclass, field
from typing import Any

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

MANUFACTURER = "PneumoScan"
# UUID namespace of every UID we derive (a fixed random UUID: it only has to be ours).
UID_NAMESPACE = uuid.UUID("5b0f7c1e-3d3a-4e55-9a61-0b3c0b6f8e21")
SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBER = 9902
# Our own coding scheme for concepts with no standard code (DICOM PS3.16 8.2: "99" prefix).
SCHEME = "99PNEUMO"

PNEUMONIA = Code("233604007", "SCT", "Pneumonia")
PRESENT = Code("52101004", "SCT", "Present")
ABSENT = Code("2667000", "SCT", "Absent")
UNKNOWN = Code("261665006", "SCT", "Unknown")
CHEST_XRAY = Code("399208008", "SCT", "Plain chest X-ray")
NO_UNITS = Code("1", "UCUM", "no units")
PROBABILITY = Code("pneumonia-probability", SCHEME, "Calibrated probability of pneumonia")
THRESHOLD = Code("pneumonia-threshold", SCHEME, "Decision threshold for pneumonia")
NOT_ANALYSED_REASON = Code("not-analysed-reason", SCHEME, "Reason the image was not analysed")
SCOPE_WARNING = Code("scope-warning", SCHEME, "Outside the validated population")
ETIOLOGY_MEANINGS = {
    "bacterial": "Probability of bacterial pneumonia",
    "viral": "Probability of viral pneumonia",
    "normal": "Probability of no pneumonia (etiology model)",
}
# Scope verdicts of the classifier, and what can go wrong before one.
REASONS = {
    "adult": "Adult patient: outside the validated population (children)",
    "lateral": "Lateral view: only frontal chest radiographs are analysed",
    "not_chest_radiograph": "Not a chest radiograph",
    "inverted": "Inverted image: grey levels could not be interpreted",
    "out_of_scope": "Outside the scope of the model",
    "undecodable": "The image could not be decoded",
    "failed": "The analysis failed",
    "cancelled": "The analysis was cancelled",
}
DISCLAIMER = "NOT FOR DIAGNOSTIC USE"
# Patient names are copied as the modality wrote them; highdicom's advice on their form is noise.
warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name",
                        category=UserWarning)


def derived_uid(*parts: str) -> str:
    """A UID under 2.25 from a UUID v5 of `parts`: the same parts give the same UID."""
    return str(hd.UID.from_uuid(str(uuid.uuid5(UID_NAMESPACE, "/".join(parts)))))


@dataclass(frozen=True)
class Findings:
    """What the classifier said about one image, as plain values.

    `pneumonia` is None when the image was not analysed; `not_analysed_reason` then says why
    (a key of REASONS, or free text). `scope_reason` is set for an image analysed although out
    of scope (a hospital in the scope gate's "warn" mode): the finding comes with the warning.
    """

    model_name: str
    model_version: str
    pneumonia: bool | None = None
    probability: float | None = None
    threshold: float | None = None
    etiology: dict[str, float] = field(default_factory=dict)
    not_analysed_reason: str = ""
    scope_reason: str = ""

    @property
    def analysed(self) -> bool:
        return self.pneumonia is not None


@dataclass(frozen=True)
class OutputUids:
    series: str
    instance: str


def output_uids(source: Dataset, findings: Findings, kind: str) -> OutputUids:
    """The series and instance UIDs of our object of `kind` ("sr", "sc") for the source image:
    the same each time for one model version, new ones for another."""
    model = (findings.model_name, findings.model_version)
    return OutputUids(series=derived_uid(str(source.StudyInstanceUID), kind, *model),
                      instance=derived_uid(str(source.SOPInstanceUID), kind, *model))


def _series_arguments(source: Dataset, uids: OutputUids, *, series_number: int,
                      description: str) -> dict[str, Any]:
    """Where a derived object stands (its own series and instance, numbered as its source) and
    who made it: the arguments highdicom's SR and SC constructors take alike."""
    return {
        "series_instance_uid": uids.series,
        "series_number": series_number,
        "sop_instance_uid": uids.instance,
        "instance_number": _instance_number(source),
        "manufacturer": MANUFACTURER,
        "series_description": description[:64],
    }


def _reason_code(reason: str) -> Code:
    key = reason if reason in REASONS else "out_of_scope"
    return Code(key, SCHEME, REASONS[key][:64])


def clean_source(source: Dataset) -> Dataset:
    """A copy of the source header whose values we copy are valid (modalities write '62' for
    an Age String, which must be '062Y'); invalid ones are dropped, never passed on."""
    source = Dataset(source)
    # Type 2 attributes highdicom copies: present (empty when unknown), as the standard asks.
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
                    "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName"):
        if keyword not in source:
            setattr(source, keyword, None)
    age = str(source.get("PatientAge", "") or "").strip().upper()
    if age:
        if age.isdigit() and len(age) <= 3:
            source.PatientAge = f"{int(age):03d}Y"
        elif not (len(age) == 4 and age[:3].isdigit() and age[3] in "DWMY"):
            del source.PatientAge
    return source


def build_sr(source: Dataset, findings: Findings) -> hd.sr.ComprehensiveSR:
    """The TID 1500 report for one source image (its header: no pixels needed)."""
    source = clean_source(source)
    uids = output_uids(source, findings, "sr")
    algorithm = hd.sr.AlgorithmIdentification(
        name=findings.model_name, version=findings.model_version, manufacturer=MANUFACTURER)
    measurements: list[hd.sr.Measurement] = []
    evaluations: list[hd.sr.QualitativeEvaluation] = []
    if findings.analysed:
        evaluations.append(hd.sr.QualitativeEvaluation(
            name=PNEUMONIA, value=PRESENT if findings.pneumonia else ABSENT))
        if findings.scope_reason:
            evaluations.append(hd.sr.QualitativeEvaluation(
                name=SCOPE_WARNING, value=_reason_code(findings.scope_reason)))
        values = [(PROBABILITY, findings.probability), (THRESHOLD, findings.threshold)]
        values += [(Code(f"{label}-probability", SCHEME,
                         ETIOLOGY_MEANINGS.get(label, f"Probability of {label}")), p)
                   for label, p in sorted(findings.etiology.items())]
        measurements = [
            hd.sr.Measurement(name=name, value=float(value), unit=NO_UNITS,
                              algorithm_id=algorithm)
            for name, value in values if value is not None
        ]
    else:
        evaluations.append(hd.sr.QualitativeEvaluation(name=PNEUMONIA, value=UNKNOWN))
        evaluations.append(hd.sr.QualitativeEvaluation(
            name=NOT_ANALYSED_REASON, value=_reason_code(findings.not_analysed_reason)))
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derived_uid(uids.instance, "tracking"), identifier="Pneumonia classification"),
        finding_type=PNEUMONIA,
        algorithm_id=algorithm,
        measurements=measurements or None,
        qualitative_evaluations=evaluations,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
    )
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derived_uid("device", findings.model_name, findings.model_version),
            name=findings.model_name, manufacturer_name=MANUFACTURER,
            model_name=f"{findings.model_name} {findings.model_version}"[:64]),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=CHEST_XRAY,
        imaging_measurements=[group],
    )
    return hd.sr.ComprehensiveSR(
        evidence=[source],
        content=report,
        is_complete=True,
        **_series_arguments(source, uids, series_number=SR_SERIES_NUMBER,
                            description=f"PneumoScan {findings.model_version} report"),
    )


def _instance_number(source: Dataset) -> int:
    try:
        return max(1, int(source.get("InstanceNumber") or 1))
    except (TypeError, ValueError):
        return 1


def overlay_pixels(radiograph: np.ndarray, heatmap_rgba: Image.Image,
                   *, caption: str, max_side: int = 1024) -> np.ndarray:
    """The heatmap blended over the radiograph, with the disclaimer and a caption burned in.

    `radiograph` is grayscale in [0, 1] (white = dense), `heatmap_rgba` the stored RGBA heat
    map (transparent where cold), stretched over the whole image as the web viewer does.
    """
    base = Image.fromarray((np.clip(radiograph, 0.0, 1.0) * 255 + 0.5).astype(np.uint8), "L")
    scale = min(1.0, max_side / max(base.size))
    if scale < 1.0:
        base = base.resize((max(1, round(base.width * scale)), max(1, round(base.height * scale))),
                           Image.Resampling.LANCZOS)
    heat = heatmap_rgba.convert("RGBA").resize(base.size, Image.Resampling.BILINEAR)
    alpha = np.asarray(heat.getchannel("A"), dtype=np.float32) * 0.55  # as the viewer's 55 %
    heat.putalpha(Image.fromarray(alpha.astype(np.uint8), "L"))
    image = Image.alpha_composite(base.convert("RGBA"), heat).convert("RGB")
    draw = ImageDraw.Draw(image)
    size = max(12, image.width // 28)
    font = ImageFont.load_default(size=size)
    for text, top in ((DISCLAIMER, True), (caption, False)):
        left, upper, right, lower = draw.textbbox((0, 0), text, font=font)
        pad = size // 3
        y = pad if top else image.height - (lower - upper) - 3 * pad
        draw.rectangle((0, y - pad, min(image.width, right - left + 3 * pad),
                        y + (lower - upper) + 2 * pad), fill=(0, 0, 0))
        draw.text((pad, y - upper + pad // 2), text, fill=(255, 255, 0) if top else (255, 255, 255),
                  font=font)
    return np.asarray(image, dtype=np.uint8)


def build_heatmap_sc(source: Dataset, findings: Findings, *, radiograph: np.ndarray,
                     heatmap_png: bytes) -> hd.sc.SCImage:
    """The secondary-capture heatmap of one classified image."""
    source = clean_source(source)
    uids = output_uids(source, findings, "sc")
    label = "pneumonia" if findings.pneumonia else "no pneumonia"
    caption = (f"{findings.model_name} {findings.model_version}: {label}, "
               f"p={findings.probability:.2f} (threshold {findings.threshold:.2f})")
    with Image.open(io.BytesIO(heatmap_png)) as heat:
        pixels = overlay_pixels(radiograph, heat, caption=caption)
    orientation = source.get("PatientOrientation")
    orientation = (tuple(str(v) for v in orientation)
                   if orientation is not None and len(orientation) == 2 else ("L", "F"))
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        patient_orientation=orientation,
        transfer_syntax_uid="1.2.840.10008.1.2.1",  # explicit VR little endian
        **_series_arguments(source, uids, series_number=SC_SERIES_NUMBER,
                            description=f"PneumoScan {findings.model_version} heatmap"),
    )
    sc.BurnedInAnnotation = "YES"
    if "Laterality" not in sc and "ImageLaterality" not in sc:
        sc.Laterality = None  # type 2C: present, empty (unknown for a derived image)
    sc.ImageComments = (f"{DISCLAIMER}. Class-activation heatmap of {findings.model_name} "
                        f"{findings.model_version}; it shows where the model looked, not a "
                        "diagnosis.")
    sc.DerivationDescription = "Heatmap of a pneumonia classifier over the source radiograph"
    source_ref = Dataset()
    source_ref.ReferencedSOPClassUID = source.SOPClassUID
    source_ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    sc.SourceImageSequence = [source_ref]
    return sc
