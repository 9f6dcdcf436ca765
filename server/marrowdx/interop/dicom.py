"""DICOM in and out.

In: smear images as DICOM (VL Microscopic Image, VL Slide-Coordinates
Microscopic Image, Secondary Capture; VL Whole Slide Microscopy is read tile
by tile by the PACS bridge) -> encoded PNG fields for the service.

Out, built with highdicom and referencing the source images:
- a Comprehensive SR following TID 1500 (Measurement Report): one
  measurement group for the differential (percent per class, with the 95%
  interval as the measurement uncertainty), cells counted, excluded cells by
  reason, and one qualitative evaluation per finding;
- Microscopy Bulk Simple Annotations: for each source image with cell boxes,
  one annotation object with a group per cell class (rectangles, 2D pixel
  coordinates), the detector score as a measurement.
"""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import highdicom as hd
import numpy as np
from PIL import Image
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from marrowdx._proto.marrowdx.v1 import diagnosis_pb2 as pb
from marrowdx.interop.codes import Coding, code_table, thresholds_of

VL_MICROSCOPIC = "1.2.840.10008.5.1.4.1.1.77.1.2"
VL_SLIDE_COORDINATES = "1.2.840.10008.5.1.4.1.1.77.1.3"
VL_WHOLE_SLIDE = "1.2.840.10008.5.1.4.1.1.77.1.6"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
MULTIFRAME_TRUE_COLOR_SC = "1.2.840.10008.5.1.4.1.1.7.4"
ACCEPTED_IMAGE_CLASSES = {VL_MICROSCOPIC: "VL Microscopic Image", VL_SLIDE_COORDINATES: "VL Slide-Coordinates Microscopic Image",
                          VL_WHOLE_SLIDE: "VL Whole Slide Microscopy Image", SECONDARY_CAPTURE: "Secondary Capture Image",
                          MULTIFRAME_TRUE_COLOR_SC: "Multi-frame True Color Secondary Capture Image"}
MANUFACTURER = "marrowdx"
PERCENT = hd.sr.CodedConcept("%", "UCUM", "percent")
CELLS = hd.sr.CodedConcept("{cells}", "UCUM", "cells")


class DicomInputError(ValueError):
    """A DICOM object the bridge cannot use (named, with the reason)."""


def result_uid(report: pb.CaseReport, *role: object) -> str:
    """A UID for one result object or part, derived from the report (its id and creation time) and
    the part's role: the same report always gives the same objects, so sending it again can never
    put a second copy in the archive, and a changed report gets new ones."""
    return generate_uid(entropy_srcs=[report.report_id, report.created_at, *map(str, role)])


def _concept(coding: Coding) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(coding.code, coding.dicom_scheme(), coding.display[:64])


# -- in -------------------------------------------------------------------------------------------------
def frames_as_png(dataset: Dataset) -> list[bytes]:
    """Every frame of a (non-WSI) smear image as PNG bytes, RGB. Raises DicomInputError."""
    sop_class = str(dataset.get("SOPClassUID", ""))
    if sop_class not in ACCEPTED_IMAGE_CLASSES or sop_class == VL_WHOLE_SLIDE:
        raise DicomInputError(f"SOP class {sop_class or '(none)'} is not a smear image this bridge reads frame by frame")
    if "PixelData" not in dataset:
        raise DicomInputError("no PixelData")
    try:
        pixels = dataset.pixel_array
    except Exception as exc:  # pydicom raises many kinds for broken pixel data
        raise DicomInputError(f"pixel data cannot be decoded: {exc}") from None
    if int(dataset.get("NumberOfFrames", 1) or 1) == 1:
        pixels = pixels[None]  # one frame, grey (H, W) or colour (H, W, 3): give it the frame axis
    out = []
    for frame in pixels:
        if frame.ndim == 2:
            frame = np.stack([frame] * 3, axis=-1)
        if frame.dtype != np.uint8:
            frame = (frame.astype(np.float32) / max(float(frame.max()), 1.0) * 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(frame[..., :3]).save(buffer, "PNG")
        out.append(buffer.getvalue())
    return out


def file_fields(path: Path, header: Dataset, field_size: int = 576) -> Iterator[tuple[bytes, float, float, bool]]:
    """The fields of one DICOM smear file, one image in memory at a time, as
    (PNG bytes, x, y, annotatable): whole-slide images region by region at their
    offset; other images frame by frame. Boxes on one frame of a multi-frame image
    would need a frame reference, so only single frames are annotatable."""
    if str(header.get("SOPClassUID", "")) == VL_WHOLE_SLIDE:
        for png, x, y in slide_fields([str(path)], field_size):
            yield png, x, y, True
        return
    frames = frames_as_png(dcmread(path))
    for png in frames:
        yield png, 0.0, 0.0, len(frames) == 1


def smear_image(rgb: np.ndarray, patient_id: str, accession: str, study_uid: str, series_uid: str,
                instance_number: int, patient_name: str = "", sop_class: str = VL_MICROSCOPIC) -> Dataset:
    """A VL Microscopic (or Secondary Capture) image dataset from RGB pixels: what a
    microscope camera or a digitiser sends. Used by the demo and the tests."""
    now = datetime.now(UTC)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = patient_id, patient_name, "", ""
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", accession, ""
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.Modality = "GM" if sop_class != SECONDARY_CAPTURE else "OT"
    ds.SeriesNumber, ds.InstanceNumber = 1, instance_number
    ds.Manufacturer = "marrowdx-sample"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    if sop_class == SECONDARY_CAPTURE:
        ds.ConversionType = "DI"
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.Rows, ds.Columns = int(rgb.shape[0]), int(rgb.shape[1])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.LossyImageCompression = "00"
    ds.PixelData = np.ascontiguousarray(rgb[..., :3], dtype=np.uint8).tobytes()
    ds.SpecimenDescriptionSequence = []
    return ds


# -- out: structured report ----------------------------------------------------------------------------
def render_sr(report: pb.CaseReport, sources: Sequence[Dataset], series_number: int = 900) -> hd.sr.ComprehensiveSR:
    """TID 1500 measurement report of the differential and findings, in the sources' study."""
    if not sources:
        raise ValueError("an SR needs the source images it reports on")
    sources = [with_defaults(s) for s in sources]
    table = code_table()
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=["marrowdx device", report.models.detector, report.models.classifier]),
            name="marrowdx", manufacturer_name=MANUFACTURER,
            model_name=f"detector {report.models.detector}; classifier {report.models.classifier}"[:64]))
    algorithm = hd.sr.AlgorithmIdentification(
        name="marrowdx", version=f"{report.models.classifier}/{report.models.rule_set}"[:64],
        parameters=[f"{k}={v}" for k, v in thresholds_of(report).items()] or None)
    measurements = []
    for item in report.differential:
        if not item.trained:
            continue  # not assessed is not 0%: a TID 300 measurement needs a value, so none is written
        properties = hd.sr.MeasurementProperties(
            upper_measurement_uncertainty=round(item.ci_high_percent - item.percent, 3),
            lower_measurement_uncertainty=round(item.percent - item.ci_low_percent, 3))
        measurements.append(hd.sr.Measurement(
            name=_concept(table.cell_class(item.cell_class, item.label)), value=round(item.percent, 3), unit=PERCENT,
            algorithm_id=algorithm, properties=properties))
    measurements.append(hd.sr.Measurement(name=_concept(table.cells_counted_for(report)), value=report.cells_counted, unit=CELLS,
                                          algorithm_id=algorithm))
    for reason, count in sorted(report.excluded_counts.items()):
        excluded = table.cells_excluded
        measurements.append(hd.sr.Measurement(
            name=_concept(Coding(excluded.system, f"{excluded.code}-{reason.upper()}", f"Excluded: {reason}")),
            value=count, unit=CELLS, algorithm_id=algorithm))
    evaluations = []
    for finding in report.findings:
        state = pb.FindingStatus.Name(finding.status).removeprefix("FINDING_STATUS_")
        evaluations.append(hd.sr.QualitativeEvaluation(
            name=_concept(table.finding(finding.code, finding.label)), value=_concept(table.finding_status(state))))
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=result_uid(report, "tracking"), identifier=f"differential {report.report_id}"[:64]),
        measurements=measurements, qualitative_evaluations=evaluations or None,
        algorithm_id=algorithm,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(s) for s in sources[:1]])
    content = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=_concept(table.panel_for(report)), imaging_measurements=[group])
    sr = hd.sr.ComprehensiveSR(
        evidence=list(sources), content=content[0], series_instance_uid=result_uid(report, "sr series"),
        series_number=series_number, sop_instance_uid=result_uid(report, "sr"), instance_number=1, manufacturer=MANUFACTURER,
        is_complete=True, is_final=False, is_verified=False,
        series_description="marrowdx differential (research use only)")
    sr.ContentLabel = "MARROWDX"
    declare_local_scheme(sr)
    return sr


def declare_local_scheme(dataset: Dataset) -> None:
    """Declare the private coding scheme (``99MDX``) the object uses: PS3.3 C.12.1.1.3 asks for
    every scheme that is not in the DICOM registry (PS3.16 Table 8-1) to be identified here."""
    table = code_table()
    item = Dataset()
    item.CodingSchemeDesignator = table.systems["local"]["dicom"]
    item.CodingSchemeName = "marrowdx local codes"
    item.CodingSchemeVersion = table.version
    item.CodingSchemeResponsibleOrganization = "marrowdx (research use only)"
    item.CodingSchemeExternalID = table.systems["local"]["fhir"]  # the same codes in FHIR
    dataset.CodingSchemeIdentificationSequence = [item]


# -- out: per-cell annotations --------------------------------------------------------------------------
@dataclass(frozen=True)
class FieldOrigin:
    """Where a field sent to the service came from: a source dataset, and the field's
    offset in that image's pixel matrix (non-zero for whole-slide tiles)."""

    source: int  # index into the source datasets
    x: float = 0.0
    y: float = 0.0


def render_annotations(report: pb.CaseReport, sources: Sequence[Dataset], origins: dict[int, FieldOrigin],
                       series_number: int = 901) -> list[hd.ann.MicroscopyBulkSimpleAnnotations]:
    """One annotation object per source image with boxes. ``origins`` maps the report's
    ``source_index`` (the field's position in the case) to where that field came from."""
    sources = [with_defaults(s) for s in sources]
    by_source: dict[int, list[tuple[pb.CellCall, FieldOrigin]]] = defaultdict(list)
    for call in report.evidence:
        origin = origins.get(call.source_index)
        if call.HasField("box") and origin is not None:
            by_source[origin.source].append((call, origin))
    series_uid = result_uid(report, "annotation series")
    algorithm = hd.AlgorithmIdentificationSequence(
        name="marrowdx", family=codes.cid7162.ArtificialIntelligence,
        version=f"{report.models.detector}/{report.models.classifier}"[:64])
    table = code_table()
    objects = []
    for number, (position, calls) in enumerate(sorted(by_source.items()), start=1):
        source = sources[position]
        groups = []
        by_label: dict[str, list[tuple[pb.CellCall, FieldOrigin]]] = defaultdict(list)
        for call, origin in calls:
            by_label[_annotation_label(call)].append((call, origin))
        for group_number, (label, members) in enumerate(sorted(by_label.items()), start=1):
            # Pixel-matrix coordinates: the field's box moved by the field's offset (whole-slide tiles).
            graphics = [np.array([[c.box.x_min + o.x, c.box.y_min + o.y], [c.box.x_max + o.x, c.box.y_min + o.y],
                                  [c.box.x_max + o.x, c.box.y_max + o.y], [c.box.x_min + o.x, c.box.y_max + o.y]],
                                 dtype=np.float32) for c, o in members]
            groups.append(hd.ann.AnnotationGroup(
                number=group_number, uid=result_uid(report, "annotation group", position, label), label=label[:64],
                annotated_property_category=codes.SCT.Cell,
                annotated_property_type=_concept(table.cell_class(label, label.replace("_", " "))),
                graphic_type=hd.ann.GraphicTypeValues.RECTANGLE, graphic_data=graphics,
                algorithm_type=hd.ann.AnnotationGroupGenerationTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                measurements=[hd.ann.Measurements(
                    name=hd.sr.CodedConcept("MDX-DET-SCORE", "99MDX", "Detector score"),
                    values=np.array([c.detection_score for c, _ in members], dtype=np.float32),
                    unit=hd.sr.CodedConcept("1", "UCUM", "no units"))]))
        objects.append(hd.ann.MicroscopyBulkSimpleAnnotations(
            source_images=[_with_frame_of_reference(source)], annotation_coordinate_type="2D",
            annotation_groups=groups, series_instance_uid=series_uid, series_number=series_number,
            sop_instance_uid=result_uid(report, "annotations", position), instance_number=number,
            manufacturer=MANUFACTURER,
            manufacturer_model_name="marrowdx", software_versions=report.models.detector or "unknown",
            device_serial_number="0", content_description="marrowdx cells (research use only)",
            pixel_origin_interpretation="FRAME" if str(source.SOPClassUID) != VL_WHOLE_SLIDE else "VOLUME"))
        declare_local_scheme(objects[-1])
    return objects


def _annotation_label(call: pb.CellCall) -> str:
    if call.countable:
        return call.cell_class
    return "excluded_" + pb.ExclusionReason.Name(call.exclusion_reason).removeprefix("EXCLUSION_REASON_").lower()


def _with_frame_of_reference(source: Dataset) -> Dataset:
    """highdicom compares source frames of reference even for 2D pixel coordinates; a
    single-frame microscopy image may have none. Give a shallow copy an empty one."""
    if "FrameOfReferenceUID" in source:
        return source
    copy = _shallow_copy(source)
    copy.FrameOfReferenceUID = None
    return copy


def _shallow_copy(source: Dataset) -> Dataset:
    """A new data set holding the same elements: adding one to it leaves ``source`` alone
    (``Dataset(source)`` shares the element dictionary, so it would not)."""
    copy = Dataset()
    for element in source:
        copy.add(element)
    if hasattr(source, "file_meta"):
        copy.file_meta = source.file_meta
    return copy


# Modality when a source image has none (a capture station's Secondary Capture often leaves it out).
DEFAULT_MODALITY = {SECONDARY_CAPTURE: "OT", MULTIFRAME_TRUE_COLOR_SC: "OT", VL_WHOLE_SLIDE: "SM",
                    VL_MICROSCOPIC: "GM", VL_SLIDE_COORDINATES: "GM"}
# Type 2 attributes highdicom copies from the sources into the SR and annotations: empty when absent.
_EMPTY_WHEN_ABSENT = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                      "AccessionNumber", "StudyID", "ReferringPhysicianName")


def with_defaults(source: Dataset) -> Dataset:
    """A source image ready to be referenced: a shallow copy with a Modality taken from its SOP
    class and empty type 2 patient/study attributes where they were missing (valid images do
    leave them out; highdicom needs them present). The received object itself is not changed."""
    missing = [k for k in _EMPTY_WHEN_ABSENT if k not in source]
    if "Modality" in source and str(source.Modality) and not missing:
        return source
    copy = _shallow_copy(source)
    for keyword in missing:
        setattr(copy, keyword, "")
    if not str(copy.get("Modality", "") or ""):
        copy.Modality = DEFAULT_MODALITY.get(str(source.get("SOPClassUID", "")), "OT")
    return copy


# -- whole-slide images ---------------------------------------------------------------------------------
def slide_fields(paths: Sequence[str], field_size: int = 576) -> Iterator[tuple[bytes, float, float]]:
    """Fields of a VL Whole Slide Microscopy image at full resolution, one region at a
    time (wsidicom reads only the tiles under each region): (PNG bytes, x, y)."""
    from wsidicom import WsiDicom

    try:
        slide = WsiDicom.open(list(paths))
    except Exception as exc:
        raise DicomInputError(f"whole-slide image cannot be opened: {exc}") from None
    try:
        width, height = slide.size.width, slide.size.height
        for y in range(0, height, field_size):
            for x in range(0, width, field_size):
                w, h = min(field_size, width - x), min(field_size, height - y)
                if w < 64 or h < 64:  # a sliver at the edge holds no whole cell
                    continue
                region = slide.read_region((x, y), 0, (w, h))
                buffer = io.BytesIO()
                region.convert("RGB").save(buffer, "PNG")
                yield buffer.getvalue(), float(x), float(y)
    finally:
        slide.close()


def smear_slide(rgb: np.ndarray, patient_id: str, accession: str, study_uid: str, tile: int = 256) -> Dataset:
    """A single-level, TILED_FULL VL Whole Slide Microscopy image (JPEG tiles) from RGB
    pixels, as a slide scanner sends it. Used by the demo and the tests."""
    from pydicom.encaps import encapsulate

    height, width = rgb.shape[:2]
    frames = []
    for top in range(0, height, tile):
        for left in range(0, width, tile):
            canvas = np.full((tile, tile, 3), 240, np.uint8)  # slide background beyond the edge
            part = rgb[top:top + tile, left:left + tile, :3]
            canvas[:part.shape[0], :part.shape[1]] = part
            buffer = io.BytesIO()
            Image.fromarray(canvas).save(buffer, "JPEG", quality=95)
            frames.append(buffer.getvalue())
    ds = smear_image(np.zeros((1, 1, 3), np.uint8), patient_id, accession, study_uid, generate_uid(), 1,
                     sop_class=VL_WHOLE_SLIDE)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.50"  # JPEG baseline
    ds.Modality, ds.FrameOfReferenceUID, ds.ContainerIdentifier = "SM", generate_uid(), f"SLIDE-{accession}"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.PhotometricInterpretation, ds.LossyImageCompression = "YBR_FULL_422", "01"
    ds.Rows = ds.Columns = tile
    ds.NumberOfFrames = len(frames)
    ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows, ds.TotalPixelMatrixFocalPlanes = width, height, 1
    ds.DimensionOrganizationType = "TILED_FULL"
    spacing_mm = 0.00025  # 0.25 um/pixel, a 40x scan
    ds.ImagedVolumeWidth, ds.ImagedVolumeHeight, ds.ImagedVolumeDepth = width * spacing_mm, height * spacing_mm, 0.001
    optical_path = Dataset()
    optical_path.OpticalPathIdentifier = "1"
    optical_path.IlluminationTypeCodeSequence = [hd.sr.CodedConcept("111744", "DCM", "Brightfield illumination")]
    optical_path.IlluminationColorCodeSequence = [hd.sr.CodedConcept("414298005", "SCT", "Full Spectrum")]
    ds.NumberOfOpticalPaths, ds.OpticalPathSequence = 1, [optical_path]
    measures, orientation, shared = Dataset(), Dataset(), Dataset()
    measures.PixelSpacing, measures.SliceThickness = [spacing_mm, spacing_mm], 0.001
    orientation.ImageOrientationSlide = [0, 1, 0, 1, 0, 0]
    shared.PixelMeasuresSequence, shared.PlaneOrientationSequence = [measures], [orientation]
    ds.SharedFunctionalGroupsSequence = [shared]
    origin = Dataset()
    origin.XOffsetInSlideCoordinateSystem, origin.YOffsetInSlideCoordinateSystem = 0, 0
    ds.TotalPixelMatrixOriginSequence = [origin]
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    return ds
