from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ExclusionReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXCLUSION_REASON_UNSPECIFIED: _ClassVar[ExclusionReason]
    EXCLUSION_REASON_SMUDGE: _ClassVar[ExclusionReason]
    EXCLUSION_REASON_CUT_BY_EDGE: _ClassVar[ExclusionReason]
    EXCLUSION_REASON_OVERLAPPING: _ClassVar[ExclusionReason]
    EXCLUSION_REASON_NOT_IDENTIFIABLE: _ClassVar[ExclusionReason]
    EXCLUSION_REASON_LOW_CONFIDENCE: _ClassVar[ExclusionReason]
    EXCLUSION_REASON_RED_CELL: _ClassVar[ExclusionReason]
    EXCLUSION_REASON_PLATELET: _ClassVar[ExclusionReason]
    EXCLUSION_REASON_ARTEFACT: _ClassVar[ExclusionReason]

class SpecimenType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SPECIMEN_TYPE_UNSPECIFIED: _ClassVar[SpecimenType]
    SPECIMEN_TYPE_BONE_MARROW_ASPIRATE: _ClassVar[SpecimenType]
    SPECIMEN_TYPE_PERIPHERAL_BLOOD: _ClassVar[SpecimenType]

class FindingStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINDING_STATUS_UNSPECIFIED: _ClassVar[FindingStatus]
    FINDING_STATUS_POSITIVE: _ClassVar[FindingStatus]
    FINDING_STATUS_NEGATIVE: _ClassVar[FindingStatus]
    FINDING_STATUS_INDETERMINATE: _ClassVar[FindingStatus]
EXCLUSION_REASON_UNSPECIFIED: ExclusionReason
EXCLUSION_REASON_SMUDGE: ExclusionReason
EXCLUSION_REASON_CUT_BY_EDGE: ExclusionReason
EXCLUSION_REASON_OVERLAPPING: ExclusionReason
EXCLUSION_REASON_NOT_IDENTIFIABLE: ExclusionReason
EXCLUSION_REASON_LOW_CONFIDENCE: ExclusionReason
EXCLUSION_REASON_RED_CELL: ExclusionReason
EXCLUSION_REASON_PLATELET: ExclusionReason
EXCLUSION_REASON_ARTEFACT: ExclusionReason
SPECIMEN_TYPE_UNSPECIFIED: SpecimenType
SPECIMEN_TYPE_BONE_MARROW_ASPIRATE: SpecimenType
SPECIMEN_TYPE_PERIPHERAL_BLOOD: SpecimenType
FINDING_STATUS_UNSPECIFIED: FindingStatus
FINDING_STATUS_POSITIVE: FindingStatus
FINDING_STATUS_NEGATIVE: FindingStatus
FINDING_STATUS_INDETERMINATE: FindingStatus

class Image(_message.Message):
    __slots__ = ("data", "image_id", "pixel_spacing_um")
    DATA_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    PIXEL_SPACING_UM_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    image_id: str
    pixel_spacing_um: float
    def __init__(self, data: _Optional[bytes] = ..., image_id: _Optional[str] = ..., pixel_spacing_um: _Optional[float] = ...) -> None: ...

class BoundingBox(_message.Message):
    __slots__ = ("x_min", "y_min", "x_max", "y_max")
    X_MIN_FIELD_NUMBER: _ClassVar[int]
    Y_MIN_FIELD_NUMBER: _ClassVar[int]
    X_MAX_FIELD_NUMBER: _ClassVar[int]
    Y_MAX_FIELD_NUMBER: _ClassVar[int]
    x_min: float
    y_min: float
    x_max: float
    y_max: float
    def __init__(self, x_min: _Optional[float] = ..., y_min: _Optional[float] = ..., x_max: _Optional[float] = ..., y_max: _Optional[float] = ...) -> None: ...

class ClassProbability(_message.Message):
    __slots__ = ("cell_class", "probability")
    CELL_CLASS_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    cell_class: str
    probability: float
    def __init__(self, cell_class: _Optional[str] = ..., probability: _Optional[float] = ...) -> None: ...

class CellCall(_message.Message):
    __slots__ = ("source_index", "image_id", "box", "detection_score", "detector_category", "countable", "exclusion_reason", "cell_class", "top_k")
    SOURCE_INDEX_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    DETECTION_SCORE_FIELD_NUMBER: _ClassVar[int]
    DETECTOR_CATEGORY_FIELD_NUMBER: _ClassVar[int]
    COUNTABLE_FIELD_NUMBER: _ClassVar[int]
    EXCLUSION_REASON_FIELD_NUMBER: _ClassVar[int]
    CELL_CLASS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    source_index: int
    image_id: str
    box: BoundingBox
    detection_score: float
    detector_category: str
    countable: bool
    exclusion_reason: ExclusionReason
    cell_class: str
    top_k: _containers.RepeatedCompositeFieldContainer[ClassProbability]
    def __init__(self, source_index: _Optional[int] = ..., image_id: _Optional[str] = ..., box: _Optional[_Union[BoundingBox, _Mapping]] = ..., detection_score: _Optional[float] = ..., detector_category: _Optional[str] = ..., countable: _Optional[bool] = ..., exclusion_reason: _Optional[_Union[ExclusionReason, str]] = ..., cell_class: _Optional[str] = ..., top_k: _Optional[_Iterable[_Union[ClassProbability, _Mapping]]] = ...) -> None: ...

class ModelVersions(_message.Message):
    __slots__ = ("detector", "classifier", "taxonomy", "rule_set", "confusion")
    DETECTOR_FIELD_NUMBER: _ClassVar[int]
    CLASSIFIER_FIELD_NUMBER: _ClassVar[int]
    TAXONOMY_FIELD_NUMBER: _ClassVar[int]
    RULE_SET_FIELD_NUMBER: _ClassVar[int]
    CONFUSION_FIELD_NUMBER: _ClassVar[int]
    detector: str
    classifier: str
    taxonomy: str
    rule_set: str
    confusion: str
    def __init__(self, detector: _Optional[str] = ..., classifier: _Optional[str] = ..., taxonomy: _Optional[str] = ..., rule_set: _Optional[str] = ..., confusion: _Optional[str] = ...) -> None: ...

class Thresholds(_message.Message):
    __slots__ = ("detection_score", "reject_probability", "overlap_iou", "minimum_count", "target_count", "duplicate_iou")
    DETECTION_SCORE_FIELD_NUMBER: _ClassVar[int]
    REJECT_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    OVERLAP_IOU_FIELD_NUMBER: _ClassVar[int]
    MINIMUM_COUNT_FIELD_NUMBER: _ClassVar[int]
    TARGET_COUNT_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_IOU_FIELD_NUMBER: _ClassVar[int]
    detection_score: float
    reject_probability: float
    overlap_iou: float
    minimum_count: int
    target_count: int
    duplicate_iou: float
    def __init__(self, detection_score: _Optional[float] = ..., reject_probability: _Optional[float] = ..., overlap_iou: _Optional[float] = ..., minimum_count: _Optional[int] = ..., target_count: _Optional[int] = ..., duplicate_iou: _Optional[float] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("decode_ms", "detect_ms", "classify_ms", "count_ms", "total_ms")
    DECODE_MS_FIELD_NUMBER: _ClassVar[int]
    DETECT_MS_FIELD_NUMBER: _ClassVar[int]
    CLASSIFY_MS_FIELD_NUMBER: _ClassVar[int]
    COUNT_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    decode_ms: float
    detect_ms: float
    classify_ms: float
    count_ms: float
    total_ms: float
    def __init__(self, decode_ms: _Optional[float] = ..., detect_ms: _Optional[float] = ..., classify_ms: _Optional[float] = ..., count_ms: _Optional[float] = ..., total_ms: _Optional[float] = ...) -> None: ...

class AnalyzeFieldRequest(_message.Message):
    __slots__ = ("image", "top_k")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    image: Image
    top_k: int
    def __init__(self, image: _Optional[_Union[Image, _Mapping]] = ..., top_k: _Optional[int] = ...) -> None: ...

class AnalyzeFieldResponse(_message.Message):
    __slots__ = ("cells", "class_counts", "excluded_counts", "models", "thresholds", "timings", "image_width", "image_height")
    class ClassCountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class ExcludedCountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    CELLS_FIELD_NUMBER: _ClassVar[int]
    CLASS_COUNTS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDED_COUNTS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLDS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    IMAGE_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    cells: _containers.RepeatedCompositeFieldContainer[CellCall]
    class_counts: _containers.ScalarMap[str, int]
    excluded_counts: _containers.ScalarMap[str, int]
    models: ModelVersions
    thresholds: Thresholds
    timings: Timings
    image_width: int
    image_height: int
    def __init__(self, cells: _Optional[_Iterable[_Union[CellCall, _Mapping]]] = ..., class_counts: _Optional[_Mapping[str, int]] = ..., excluded_counts: _Optional[_Mapping[str, int]] = ..., models: _Optional[_Union[ModelVersions, _Mapping]] = ..., thresholds: _Optional[_Union[Thresholds, _Mapping]] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., image_width: _Optional[int] = ..., image_height: _Optional[int] = ...) -> None: ...

class ClassifyCellsRequest(_message.Message):
    __slots__ = ("crops", "top_k")
    CROPS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    crops: _containers.RepeatedCompositeFieldContainer[Image]
    top_k: int
    def __init__(self, crops: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., top_k: _Optional[int] = ...) -> None: ...

class ClassifyCellsResponse(_message.Message):
    __slots__ = ("cells", "models", "thresholds")
    CELLS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLDS_FIELD_NUMBER: _ClassVar[int]
    cells: _containers.RepeatedCompositeFieldContainer[CellCall]
    models: ModelVersions
    thresholds: Thresholds
    def __init__(self, cells: _Optional[_Iterable[_Union[CellCall, _Mapping]]] = ..., models: _Optional[_Union[ModelVersions, _Mapping]] = ..., thresholds: _Optional[_Union[Thresholds, _Mapping]] = ...) -> None: ...

class CaseInfo(_message.Message):
    __slots__ = ("case_id", "accession_id", "specimen_type", "target_count", "request_id")
    CASE_ID_FIELD_NUMBER: _ClassVar[int]
    ACCESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SPECIMEN_TYPE_FIELD_NUMBER: _ClassVar[int]
    TARGET_COUNT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    case_id: str
    accession_id: str
    specimen_type: SpecimenType
    target_count: int
    request_id: str
    def __init__(self, case_id: _Optional[str] = ..., accession_id: _Optional[str] = ..., specimen_type: _Optional[_Union[SpecimenType, str]] = ..., target_count: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class DiagnoseCaseRequest(_message.Message):
    __slots__ = ("case_info", "fields", "crops")
    CASE_INFO_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    CROPS_FIELD_NUMBER: _ClassVar[int]
    case_info: CaseInfo
    fields: _containers.RepeatedCompositeFieldContainer[Image]
    crops: _containers.RepeatedCompositeFieldContainer[Image]
    def __init__(self, case_info: _Optional[_Union[CaseInfo, _Mapping]] = ..., fields: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., crops: _Optional[_Iterable[_Union[Image, _Mapping]]] = ...) -> None: ...

class DiagnoseCaseResponse(_message.Message):
    __slots__ = ("report",)
    REPORT_FIELD_NUMBER: _ClassVar[int]
    report: CaseReport
    def __init__(self, report: _Optional[_Union[CaseReport, _Mapping]] = ...) -> None: ...

class DiagnoseCaseStreamRequest(_message.Message):
    __slots__ = ("start", "field", "crop", "finish")
    START_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    CROP_FIELD_NUMBER: _ClassVar[int]
    FINISH_FIELD_NUMBER: _ClassVar[int]
    start: CaseInfo
    field: Image
    crop: Image
    finish: Finish
    def __init__(self, start: _Optional[_Union[CaseInfo, _Mapping]] = ..., field: _Optional[_Union[Image, _Mapping]] = ..., crop: _Optional[_Union[Image, _Mapping]] = ..., finish: _Optional[_Union[Finish, _Mapping]] = ...) -> None: ...

class Finish(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RunningCount(_message.Message):
    __slots__ = ("images_received", "cells_counted", "target_count", "target_reached", "class_counts")
    class ClassCountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    IMAGES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    CELLS_COUNTED_FIELD_NUMBER: _ClassVar[int]
    TARGET_COUNT_FIELD_NUMBER: _ClassVar[int]
    TARGET_REACHED_FIELD_NUMBER: _ClassVar[int]
    CLASS_COUNTS_FIELD_NUMBER: _ClassVar[int]
    images_received: int
    cells_counted: int
    target_count: int
    target_reached: bool
    class_counts: _containers.ScalarMap[str, int]
    def __init__(self, images_received: _Optional[int] = ..., cells_counted: _Optional[int] = ..., target_count: _Optional[int] = ..., target_reached: _Optional[bool] = ..., class_counts: _Optional[_Mapping[str, int]] = ...) -> None: ...

class DiagnoseCaseStreamResponse(_message.Message):
    __slots__ = ("progress", "report")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    progress: RunningCount
    report: CaseReport
    def __init__(self, progress: _Optional[_Union[RunningCount, _Mapping]] = ..., report: _Optional[_Union[CaseReport, _Mapping]] = ...) -> None: ...

class DifferentialItem(_message.Message):
    __slots__ = ("cell_class", "label", "count", "percent", "ci_low_percent", "ci_high_percent", "trained")
    CELL_CLASS_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    CI_LOW_PERCENT_FIELD_NUMBER: _ClassVar[int]
    CI_HIGH_PERCENT_FIELD_NUMBER: _ClassVar[int]
    TRAINED_FIELD_NUMBER: _ClassVar[int]
    cell_class: str
    label: str
    count: int
    percent: float
    ci_low_percent: float
    ci_high_percent: float
    trained: bool
    def __init__(self, cell_class: _Optional[str] = ..., label: _Optional[str] = ..., count: _Optional[int] = ..., percent: _Optional[float] = ..., ci_low_percent: _Optional[float] = ..., ci_high_percent: _Optional[float] = ..., trained: _Optional[bool] = ...) -> None: ...

class Finding(_message.Message):
    __slots__ = ("code", "label", "status", "measured_percent", "ci_low_percent", "ci_high_percent", "threshold_percent", "rule_id", "source", "explanation", "additional_cells_needed", "urgent", "not_assessed", "tier", "no_count_decides", "specimen")
    CODE_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MEASURED_PERCENT_FIELD_NUMBER: _ClassVar[int]
    CI_LOW_PERCENT_FIELD_NUMBER: _ClassVar[int]
    CI_HIGH_PERCENT_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_PERCENT_FIELD_NUMBER: _ClassVar[int]
    RULE_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    ADDITIONAL_CELLS_NEEDED_FIELD_NUMBER: _ClassVar[int]
    URGENT_FIELD_NUMBER: _ClassVar[int]
    NOT_ASSESSED_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    NO_COUNT_DECIDES_FIELD_NUMBER: _ClassVar[int]
    SPECIMEN_FIELD_NUMBER: _ClassVar[int]
    code: str
    label: str
    status: FindingStatus
    measured_percent: float
    ci_low_percent: float
    ci_high_percent: float
    threshold_percent: float
    rule_id: str
    source: str
    explanation: str
    additional_cells_needed: int
    urgent: bool
    not_assessed: bool
    tier: str
    no_count_decides: bool
    specimen: str
    def __init__(self, code: _Optional[str] = ..., label: _Optional[str] = ..., status: _Optional[_Union[FindingStatus, str]] = ..., measured_percent: _Optional[float] = ..., ci_low_percent: _Optional[float] = ..., ci_high_percent: _Optional[float] = ..., threshold_percent: _Optional[float] = ..., rule_id: _Optional[str] = ..., source: _Optional[str] = ..., explanation: _Optional[str] = ..., additional_cells_needed: _Optional[int] = ..., urgent: _Optional[bool] = ..., not_assessed: _Optional[bool] = ..., tier: _Optional[str] = ..., no_count_decides: _Optional[bool] = ..., specimen: _Optional[str] = ...) -> None: ...

class CaseReport(_message.Message):
    __slots__ = ("report_id", "case_info", "created_at", "differential", "excluded_counts", "cells_counted", "target_count", "minimum_count", "myeloid_erythroid_ratio", "findings", "conclusion", "models", "thresholds", "timings", "evidence", "images_received", "disclaimer", "myeloid_erythroid_ratio_ci_low", "myeloid_erythroid_ratio_ci_high", "not_assessed")
    class ExcludedCountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    REPORT_ID_FIELD_NUMBER: _ClassVar[int]
    CASE_INFO_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    DIFFERENTIAL_FIELD_NUMBER: _ClassVar[int]
    EXCLUDED_COUNTS_FIELD_NUMBER: _ClassVar[int]
    CELLS_COUNTED_FIELD_NUMBER: _ClassVar[int]
    TARGET_COUNT_FIELD_NUMBER: _ClassVar[int]
    MINIMUM_COUNT_FIELD_NUMBER: _ClassVar[int]
    MYELOID_ERYTHROID_RATIO_FIELD_NUMBER: _ClassVar[int]
    FINDINGS_FIELD_NUMBER: _ClassVar[int]
    CONCLUSION_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLDS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    IMAGES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    DISCLAIMER_FIELD_NUMBER: _ClassVar[int]
    MYELOID_ERYTHROID_RATIO_CI_LOW_FIELD_NUMBER: _ClassVar[int]
    MYELOID_ERYTHROID_RATIO_CI_HIGH_FIELD_NUMBER: _ClassVar[int]
    NOT_ASSESSED_FIELD_NUMBER: _ClassVar[int]
    report_id: str
    case_info: CaseInfo
    created_at: str
    differential: _containers.RepeatedCompositeFieldContainer[DifferentialItem]
    excluded_counts: _containers.ScalarMap[str, int]
    cells_counted: int
    target_count: int
    minimum_count: int
    myeloid_erythroid_ratio: float
    findings: _containers.RepeatedCompositeFieldContainer[Finding]
    conclusion: str
    models: ModelVersions
    thresholds: Thresholds
    timings: Timings
    evidence: _containers.RepeatedCompositeFieldContainer[CellCall]
    images_received: int
    disclaimer: str
    myeloid_erythroid_ratio_ci_low: float
    myeloid_erythroid_ratio_ci_high: float
    not_assessed: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, report_id: _Optional[str] = ..., case_info: _Optional[_Union[CaseInfo, _Mapping]] = ..., created_at: _Optional[str] = ..., differential: _Optional[_Iterable[_Union[DifferentialItem, _Mapping]]] = ..., excluded_counts: _Optional[_Mapping[str, int]] = ..., cells_counted: _Optional[int] = ..., target_count: _Optional[int] = ..., minimum_count: _Optional[int] = ..., myeloid_erythroid_ratio: _Optional[float] = ..., findings: _Optional[_Iterable[_Union[Finding, _Mapping]]] = ..., conclusion: _Optional[str] = ..., models: _Optional[_Union[ModelVersions, _Mapping]] = ..., thresholds: _Optional[_Union[Thresholds, _Mapping]] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., evidence: _Optional[_Iterable[_Union[CellCall, _Mapping]]] = ..., images_received: _Optional[int] = ..., disclaimer: _Optional[str] = ..., myeloid_erythroid_ratio_ci_low: _Optional[float] = ..., myeloid_erythroid_ratio_ci_high: _Optional[float] = ..., not_assessed: _Optional[_Iterable[str]] = ...) -> None: ...

class GetReportRequest(_message.Message):
    __slots__ = ("report_id", "accession_id")
    REPORT_ID_FIELD_NUMBER: _ClassVar[int]
    ACCESSION_ID_FIELD_NUMBER: _ClassVar[int]
    report_id: str
    accession_id: str
    def __init__(self, report_id: _Optional[str] = ..., accession_id: _Optional[str] = ...) -> None: ...

class GetReportResponse(_message.Message):
    __slots__ = ("report",)
    REPORT_FIELD_NUMBER: _ClassVar[int]
    report: CaseReport
    def __init__(self, report: _Optional[_Union[CaseReport, _Mapping]] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CellClassInfo(_message.Message):
    __slots__ = ("code", "label", "lineage", "countable", "blast_equivalent", "trained")
    CODE_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    LINEAGE_FIELD_NUMBER: _ClassVar[int]
    COUNTABLE_FIELD_NUMBER: _ClassVar[int]
    BLAST_EQUIVALENT_FIELD_NUMBER: _ClassVar[int]
    TRAINED_FIELD_NUMBER: _ClassVar[int]
    code: str
    label: str
    lineage: str
    countable: bool
    blast_equivalent: bool
    trained: bool
    def __init__(self, code: _Optional[str] = ..., label: _Optional[str] = ..., lineage: _Optional[str] = ..., countable: _Optional[bool] = ..., blast_equivalent: _Optional[bool] = ..., trained: _Optional[bool] = ...) -> None: ...

class GetModelInfoResponse(_message.Message):
    __slots__ = ("models", "thresholds", "classes", "detector_categories", "disclaimer")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLDS_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    DETECTOR_CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    DISCLAIMER_FIELD_NUMBER: _ClassVar[int]
    models: ModelVersions
    thresholds: Thresholds
    classes: _containers.RepeatedCompositeFieldContainer[CellClassInfo]
    detector_categories: _containers.RepeatedScalarFieldContainer[str]
    disclaimer: str
    def __init__(self, models: _Optional[_Union[ModelVersions, _Mapping]] = ..., thresholds: _Optional[_Union[Thresholds, _Mapping]] = ..., classes: _Optional[_Iterable[_Union[CellClassInfo, _Mapping]]] = ..., detector_categories: _Optional[_Iterable[str]] = ..., disclaimer: _Optional[str] = ...) -> None: ...
