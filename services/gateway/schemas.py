"""Request and response bodies of the REST API (pydantic: validated, documented in OpenAPI).

Structural checks live here (point pairs, labels 0/1, matching lengths, finite numbers);
checks that need settings (point / target counts -> 413) or the store are in the routes.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    StringConstraints,
    field_validator,
    model_validator,
)

from vplab.method_names import DEFAULT_METHOD, METHOD_NAMES
from vplab.states import JobState
from vplab.storage.keys import ID_PATTERN, SHA256_PATTERN

INT32_MAX = 2**31 - 1
Method = Literal[METHOD_NAMES]  # type: ignore[valid-type]  # an enum in the OpenAPI document

# Ids as the server enforces them (vplab.storage.keys), declared so that generated clients
# and fuzzers agree with the server.
Id = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
ImageId = Annotated[
    str, StringConstraints(pattern=SHA256_PATTERN), Field(description="sha256 of the image bytes")
]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


RleSide = Annotated[int, Field(ge=1, le=65536)]


class Rle(BaseModel):
    """A binary mask in COCO compressed RLE (column-major), as produced by pycocotools."""

    model_config = ConfigDict(extra="forbid")
    size: tuple[RleSide, RleSide] = Field(description="[height, width] in pixels")
    counts: str = Field(
        max_length=64 * 1024 * 1024,
        pattern=r"^[0-~]*$",  # pycocotools' alphabet: characters '0' (48) to '~' (126)
        description="COCO compressed RLE string; its runs must cover height x width pixels",
    )

    def wire(self) -> dict[str, Any]:
        return {"size": [int(self.size[0]), int(self.size[1])], "counts": self.counts}


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


# --- datasets ----------------------------------------------------------------------------


# Printable, not blank: no control characters anywhere.
_NAME_PATTERN = r"^[^\u0000-\u001f\u007f]*[^\s\u0000-\u001f\u007f][^\u0000-\u001f\u007f]*$"


_COLOR_PATTERN = r"^#[0-9a-fA-F]{6}$"
_ClassName = Annotated[str, Field(min_length=1, max_length=200, pattern=_NAME_PATTERN)]
_Color = Annotated[str, Field(pattern=_COLOR_PATTERN, description="#rrggbb")]


class ClassIn(_Body):
    name: _ClassName
    color: _Color | None = Field(default=None, description="Default: a palette colour by id")


class ClassEdit(_Body):
    """Edit the class ``id`` (name and/or colour)."""

    id: int = Field(ge=1)
    name: _ClassName | None = None
    color: _Color | None = None


class ClassOut(BaseModel):
    id: int = Field(description="The value of the class's pixels in label maps (0 = background)")
    name: str
    color: str


_CHANNELS = (
    "Multi-channel TIFFs: the channels (0-based) stored for each image, one (shown grey) or "
    "2-3 distinct (a red/green/blue composite); default: 1 -> grey, 2-3 -> RGB, more -> "
    "the first 3. 8-bit PNG/JPEG images are stored as they are"
)


def _not_bool(value: Any) -> Any:
    """JSON true / false are not integers (pydantic would take them as 1 / 0)."""
    if isinstance(value, bool):
        raise ValueError("must be an integer, not a boolean")
    return value


_ChannelIndex = Annotated[
    int, Field(ge=0, le=63), BeforeValidator(_not_bool)
]  # this order: the bounds reach the schema
Channels = Annotated[
    list[_ChannelIndex],
    Field(min_length=1, max_length=3, json_schema_extra={"uniqueItems": True}),
]
ChannelsOrNone = Annotated[  # PATCH: [] clears the setting
    list[_ChannelIndex], Field(max_length=3, json_schema_extra={"uniqueItems": True})
]


class DatasetCreate(_Body):
    name: str = Field(
        min_length=1, max_length=200, pattern=_NAME_PATTERN, description="A display name"
    )
    classes: list[ClassIn] | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        description="Classes, ids 1..K in this order; default: one class. Labels are label "
        "maps of values 0..K (a one-class dataset also takes binary masks)",
    )
    channels: Channels | None = Field(default=None, description=_CHANNELS)


class DatasetPatch(_Body):
    name: str | None = Field(default=None, min_length=1, max_length=200, pattern=_NAME_PATTERN)
    classes: list[ClassEdit | ClassIn] | None = Field(
        default=None,
        max_length=1024,
        description="With an id: edit that class (name and/or colour; the last edit of an id "
        "wins). Without: append a class, which gets the next id. Ids are never reused",
    )
    channels: ChannelsOrNone | None = Field(
        default=None,
        description=_CHANNELS + "; `[]` = back to the default rule. Images already stored "
        "keep the channels they were stored with",
    )


class DatasetOut(BaseModel):
    id: str
    name: str
    created_at: str
    classes: list[ClassOut]
    channels: list[int] | None = Field(description="The channels setting (null: the default)")


class DatasetList(BaseModel):
    datasets: list[DatasetOut]


class ImageInfoOut(BaseModel):
    image_id: str
    filename: str | None
    added_at: str
    metadata: dict[str, Any] | None = Field(
        description="TIFFs: format (TIFF / OME-TIFF), axes, shape, dtype, the normalisation "
        "rule, OME pixel sizes and channel names; with a channels setting, the channels "
        "stored and the uploaded file's sha256 (source_sha256)"
    )


class ImageList(BaseModel):
    images: list[str] = Field(description="Image ids (sha256), sorted")
    details: list[ImageDetail] = Field(
        description="Per image, in the same order: its latest label, where it came from, and "
        "its latest prediction"
    )


class DataJobErrorOut(BaseModel):
    entry: str = Field(description="The archive member (import) or image id (embeddings)")
    error: str


class DataJobOut(BaseModel):
    job_id: str
    dataset_id: str
    kind: Literal["import", "embeddings"]
    state: JobState
    done: int = Field(description="Images finished (with or without an error) in this attempt")
    total: int
    errors: list[DataJobErrorOut] = Field(description="Per item; the rest went on")
    report: dict[str, int | str | list[str]] = Field(
        description="What the job did. import: layout (masks|coco), images_added, "
        "images_present (already in the dataset), labels_written, labels_unchanged (equal to "
        "the latest: not written), classes_added, errors; embeddings: computed, cached"
    )
    encoders: list[str] = Field(description="embeddings: the caches filled")
    error: str
    created_at: str
    updated_at: str
    attempts: int


class DataJobList(BaseModel):
    jobs: list[DataJobOut]


class EmbeddingsCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    encoders: list[Literal["sam", "dinov2"]] = Field(
        default_factory=list, description="The caches to fill; empty = both"
    )


class ImageUploaded(BaseModel):
    image_id: str = Field(description="sha256 of the image bytes (lowercase hex)")


class LabelVersion(BaseModel):
    image_id: str
    version: int


# --- segmentation ------------------------------------------------------------------------


def _finite(values, what: str):
    for v in values:
        if not math.isfinite(v):
            raise ValueError(f"{what} must be finite numbers")
    return values


class SegmentRequest(_Body):
    points: list[tuple[float, float]] = Field(
        default_factory=list,
        description="Point prompts as [x, y] pixel pairs (x = column, y = row)",
    )
    labels: list[Literal[0, 1]] = Field(
        default_factory=list, description="One label per point: 1 = object, 0 = background"
    )
    box: tuple[float, float, float, float] | None = Field(
        default=None, description="Box prompt [x0, y0, x1, y1] in pixels"
    )
    mask_input_rle: Rle | None = Field(
        default=None, description="Previous mask (image size) as RLE"
    )
    multimask: bool = Field(default=False, description="Return SAM's 3 candidate masks")
    model_id: Id | None = Field(default=None, description="A tuned model of the tenant")

    @field_validator("points")
    @classmethod
    def _points_finite(cls, v):
        for p in v:
            _finite(p, "points")
        return v

    @field_validator("box")
    @classmethod
    def _box_finite(cls, v):
        if v is not None:
            _finite(v, "box")
            if v[2] < v[0] or v[3] < v[1]:
                raise ValueError("box must be [x0, y0, x1, y1] with x0 <= x1 and y0 <= y1")
        return v

    @model_validator(mode="after")
    def _consistent(self):
        if len(self.points) != len(self.labels):
            raise ValueError(
                f"points and labels must have the same length ({len(self.points)} != {len(self.labels)})"
            )
        if not self.points and self.box is None and self.mask_input_rle is None:
            raise ValueError("give at least one prompt: points, box or mask_input_rle")
        return self


class MaskOut(BaseModel):
    rle: Rle
    score: float


class SegmentResponse(BaseModel):
    masks: list[MaskOut] = Field(description="Candidate masks, best first")
    height: int
    width: int


class ReferenceIn(_Body):
    image_id: ImageId
    mask_rle: Rle


class VisualPromptRequest(_Body):
    references: list[ReferenceIn] = Field(min_length=1, description="Annotated reference images")
    targets: list[ImageId] | None = Field(
        default=None,
        description="Images to segment; default: every image of the dataset that is not a reference",
    )
    model_id: Id | None = None
    matcher: Literal["soft", "prototype"] = "soft"
    seed: StrictInt = Field(default=0, ge=0, le=INT32_MAX)


class VisualPromptResult(BaseModel):
    index: int = Field(description="Position of the target in the (resolved) target list")
    image_id: str
    mask_rle: Rle
    score: float
    points: list[tuple[float, float]] = Field(description="Point prompts derived by the matcher")
    point_labels: list[int]


class VisualPromptResponse(BaseModel):
    results: list[VisualPromptResult]


class AutoSegmentRequest(_Body):
    model_id: Id = Field(description="A PTSAM model of the tenant")


class AutoSegmentResponse(BaseModel):
    mask_rle: Rle
    score: float


# --- training ----------------------------------------------------------------------------


class TrainingCreate(_Body):
    dataset_id: Id
    method: Method = Field(default=DEFAULT_METHOD, description="A PEFT method (`vplab peft list`)")
    base_model: str = Field(default="", pattern=r"^([a-z0-9][a-z0-9_-]{0,63})?$")
    steps: StrictInt = Field(default=0, ge=0, le=1_000_000, description="0 = the method's default")
    method_config: dict[str, Any] = Field(
        default_factory=dict,
        description="Overrides of the method's config fields (`vplab peft describe --method M`)",
    )
    seed: StrictInt = Field(default=0, ge=0, le=INT32_MAX)
    lr: float | None = Field(
        default=None, gt=0, allow_inf_nan=False, description="default: the method's"
    )
    recipe: str = Field(
        default="",
        pattern=r"^([a-z0-9][a-z0-9-]{0,31})?$",
        description="A named training recipe of the method (`GET /v1/methods`: `recipes`); "
        "empty = its default",
    )


class JobOut(BaseModel):
    job_id: str
    dataset_id: str
    method: str
    base_model: str
    state: JobState
    step: int
    total_steps: int
    best_val_iou: float
    initial_val_iou: float
    model_id: str
    error: str
    created_at: str
    updated_at: str
    attempts: int
    zero_shot_miou: float | None = Field(
        description="The round's gain: visual-prompting mIoU of the stock pipeline on the "
        "labelled images the model did not train on (null: there were none)"
    )
    tuned_miou: float | None = Field(description="The same with the tuned model")
    gain_images: int = Field(description="How many images the gain was measured on")
    recipe: str = Field(description="The training recipe the job uses")
    val_on_train: bool = Field(
        description="Validation ran on the training images (fewer than 10 labelled): "
        "best_val_iou then overstates quality on new images"
    )


class JobList(BaseModel):
    jobs: list[JobOut]


class MethodOut(BaseModel):
    name: str
    description: str = Field(description="One line: what trains")
    encoder_mode: str
    prompt_free: bool
    mergeable: bool = Field(description="Exportable as a merged plain-SAM checkpoint")
    default_steps: int
    recipes: list[str] = Field(description="Named training recipes, the default first")
    base: str = Field(description="The deployed base model the count is for")
    trainable_parameters: int | None = Field(
        description="On `base`; null when the method's defaults do not fit it (see `unavailable`)"
    )
    unavailable: str


class MethodList(BaseModel):
    methods: list[MethodOut]


# --- models ------------------------------------------------------------------------------


class ModelOut(BaseModel):
    model_id: str
    config: dict[str, Any]


class ModelList(BaseModel):
    models: list[ModelOut]


# --- prediction runs and review ------------------------------------------------------------


class LabelReference(_Body):
    """An image whose latest label is the reference (every class in it)."""

    image_id: ImageId


class MaskReference(_Body):
    """One class's mask on an image."""

    image_id: ImageId
    mask_rle: Rle
    class_id: StrictInt = Field(ge=1, le=INT32_MAX)


PredictionReferenceIn = LabelReference | MaskReference


class PredictionCreate(_Body):
    references: list[PredictionReferenceIn] = Field(min_length=1)
    model_id: Id | None = Field(
        default=None, description="A tuned model; default: the stock pipeline"
    )
    targets: list[ImageId] | None = Field(
        default=None, description="Default: every image of the dataset that is not a reference"
    )
    matcher: Literal["soft", "prototype"] = "soft"
    seed: StrictInt = Field(default=0, ge=0, le=INT32_MAX)


class PredictionReferenceOut(BaseModel):
    image_id: str
    class_id: int | None = None
    mask_rle: Rle | None = None
    label_version: int | None = Field(default=None, description="The label version pinned")


class PredictionErrorOut(BaseModel):
    image_id: str
    error: str


class PredictionRunOut(BaseModel):
    run_id: str
    dataset_id: str
    model_id: str
    state: JobState
    done: int = Field(description="Targets finished (with a result or an error)")
    total: int
    errors: list[PredictionErrorOut]
    references: list[PredictionReferenceOut]
    matcher: str
    seed: int
    error: str
    created_at: str
    updated_at: str
    attempts: int


class PredictionRunList(BaseModel):
    runs: list[PredictionRunOut]


class PredictionSummary(BaseModel):
    image_id: str
    score: float = Field(description="Mean over the run's classes of the best mask score")
    uncertainty: float = Field(description="Higher: correct this one first")
    scores: dict[str, float] = Field(description="Class id -> score")
    points: dict[str, list[tuple[float, float, int]]] = Field(
        description="Class id -> the point prompts used, [x, y, label]"
    )


class PredictionResultPage(BaseModel):
    results: list[PredictionSummary]
    next: str | None = Field(description="Pass as `after` for the next page; null at the end")


class ClassResult(BaseModel):
    mask_rle: Rle
    score: float
    points: list[tuple[float, float, int]]


class PredictionResultOut(BaseModel):
    image_id: str
    run_id: str
    model_id: str
    height: int
    width: int
    score: float
    uncertainty: float
    classes: dict[str, ClassResult] = Field(description="Class id -> its mask (no overlaps)")
    review: str | None = Field(description="accepted | edited | rejected, or null")
    created_at: str


class ReviewOut(BaseModel):
    image_id: str
    run_id: str
    model_id: str
    verdict: Literal["accepted", "edited", "rejected"]
    label_version: int | None = None
    reviewed_at: str


class Provenance(BaseModel):
    source: Literal["manual", "accepted", "edited"]
    run_id: str | None = None
    model_id: str | None = None


class LatestPrediction(BaseModel):
    run_id: str
    model_id: str
    score: float
    uncertainty: float
    review: str | None


class ImageDetail(BaseModel):
    image_id: str
    label_version: int | None
    provenance: Provenance | None = Field(description="Of the latest label version")
    prediction: LatestPrediction | None = Field(description="From the newest run that has one")


class EvaluationCreate(_Body):
    dataset_id: Id
    references: list[PredictionReferenceIn] = Field(min_length=1)
    model_id: Id | None = Field(
        default=None, description="A tuned model; default: the stock pipeline"
    )
    images: list[ImageId] | None = Field(
        default=None,
        description="Labelled images to score; default: every labelled image that is not a "
        "reference and, for a tuned model, not in its training set",
    )
    matcher: Literal["soft", "prototype"] = "soft"
    seed: StrictInt = Field(default=0, ge=0, le=INT32_MAX)


class ClassScoreOut(BaseModel):
    iou: float
    dice: float


class ImageScoreOut(BaseModel):
    image_id: str
    iou: float
    dice: float


class EvaluationOut(BaseModel):
    evaluation_id: str
    dataset_id: str
    model_id: str
    state: JobState
    done: int
    total: int
    errors: list[PredictionErrorOut]
    references: list[PredictionReferenceOut]
    matcher: str
    seed: int
    error: str
    created_at: str
    updated_at: str
    attempts: int
    miou: float | None = Field(description="Mean over the dataset's classes (set when SUCCEEDED)")
    mean_dice: float | None
    per_class: dict[str, ClassScoreOut] = Field(description="Class id -> IoU / Dice")
    per_image: list[ImageScoreOut]
    n_images: int


class EvaluationList(BaseModel):
    evaluations: list[EvaluationOut]


ImageList.model_rebuild()  # its details are declared below it
