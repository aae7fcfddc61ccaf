"""The one place that builds object-store keys (layout: ARCHITECTURE.md, "Storage layout").

Every id is validated against a strict pattern before it is put into a key. That is
what makes path traversal impossible: no id can contain '/', '..', or anything else
that would move a key out of its tenant's prefix.
"""

from __future__ import annotations

import re

from vplab.errors import InvalidInput

# The id patterns, also declared in the REST API's OpenAPI document (same strings).
ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"
_ID = re.compile(ID_PATTERN.strip("^$"))
_SHA256 = re.compile(SHA256_PATTERN.strip("^$"))
# Encoder ids name weights and adapters, e.g. "sam-vit_b.lora-r4"; '.' is allowed but
# must not start the id nor repeat (so "." and ".." are impossible).
_ENCODER_ID = re.compile(r"[a-z0-9][a-z0-9_-]*(\.[a-z0-9_-]+)*")
_ENCODER_ID_MAX = 128
_KEY_HASH = re.compile(r"[0-9a-f]{16,128}")

_LABEL_VERSION = re.compile(r"/v(0|[1-9][0-9]*)\.png")
_CKPT_STEP = re.compile(r"/ckpt/step-(0|[1-9][0-9]*)\.safetensors")

BASE_MODELS = "base-models/"
# The files of an adapter folder: the same names in the store, on disk and in the export zip.
ADAPTER_WEIGHTS_FILE = "adapter.safetensors"
ADAPTER_CONFIG_FILE = "config.json"
TENANTS = "tenants/"
SYSTEM = "system/"


# --- validators ------------------------------------------------------------------------


def check_id(value: object, field: str) -> str:
    """Return ``value`` if it is a valid id (``^[a-z0-9][a-z0-9_-]{0,63}$``)."""
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise InvalidInput(
            f"{field} must match [a-z0-9][a-z0-9_-]{{0,63}} "
            f"(lowercase letters, digits, '-', '_'), got {value!r}"
        )
    return value


def check_sha256(value: object, field: str = "sha256") -> str:
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise InvalidInput(f"{field} must be 64 lowercase hex characters, got {value!r}")
    return value


def check_encoder_id(value: object, field: str = "encoder_id") -> str:
    if (
        not isinstance(value, str)
        or len(value) > _ENCODER_ID_MAX
        or not _ENCODER_ID.fullmatch(value)
    ):
        raise InvalidInput(
            f"{field} must be lowercase letters, digits, '-', '_' and single '.' separators "
            f"(at most {_ENCODER_ID_MAX} chars), got {value!r}"
        )
    return value


def check_index(value: object, field: str) -> int:
    # bool is an int subclass; True as a version is a bug, not a 1.
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidInput(f"{field} must be a non-negative integer, got {value!r}")
    return value


def check_key_hash(value: object, field: str = "key_hash") -> str:
    if not isinstance(value, str) or not _KEY_HASH.fullmatch(value):
        raise InvalidInput(f"{field} must be 16-128 lowercase hex characters, got {value!r}")
    return value


# --- base models -----------------------------------------------------------------------


def base_model(name: str, sha256: str) -> str:
    return f"{BASE_MODELS}{check_id(name, 'base model name')}/{check_sha256(sha256)}.pth"


# --- system registry (API keys, tenants) -------------------------------------------------


def tenant_record(tenant: str) -> str:
    return f"{SYSTEM}tenants/{check_id(tenant, 'tenant')}.json"


def api_key_record(key_hash: str) -> str:
    # Only the hash of an API key is ever stored, and it is the lookup key.
    return f"{SYSTEM}api-keys/{check_key_hash(key_hash)}.json"


def tenant_records_prefix() -> str:
    return f"{SYSTEM}tenants/"


def api_key_records_prefix() -> str:
    return f"{SYSTEM}api-keys/"


def parse_tenant_record(key: str) -> str | None:
    """``system/tenants/{t}.json`` -> t; None for anything else."""
    return _json_record_name(key, tenant_records_prefix(), _ID)


def parse_api_key_record(key: str) -> str | None:
    """``system/api-keys/{key_hash}.json`` -> key_hash; None for anything else."""
    return _json_record_name(key, api_key_records_prefix(), _KEY_HASH)


def _json_record_name(key: str, prefix: str, pattern: re.Pattern[str]) -> str | None:
    parts = _under(key, prefix)
    if parts is None or len(parts) != 1 or not parts[0].endswith(".json"):
        return None
    name = parts[0].removesuffix(".json")
    return name if pattern.fullmatch(name) else None


# --- tenant objects ----------------------------------------------------------------------


def tenant_prefix(tenant: str) -> str:
    return f"{TENANTS}{check_id(tenant, 'tenant')}/"


def images_prefix(tenant: str) -> str:
    return f"{tenant_prefix(tenant)}images/"


def image(tenant: str, sha256: str) -> str:
    return f"{images_prefix(tenant)}{check_sha256(sha256)}"


def datasets_prefix(tenant: str) -> str:
    return f"{tenant_prefix(tenant)}datasets/"


def dataset(tenant: str, dataset_id: str) -> str:
    return f"{datasets_prefix(tenant)}{check_id(dataset_id, 'dataset')}.json"


def dataset_objects_prefix(tenant: str, dataset_id: str) -> str:
    """Everything a dataset owns besides its ``{dataset}.json`` metadata record."""
    return f"{datasets_prefix(tenant)}{check_id(dataset_id, 'dataset')}/"


def dataset_images_prefix(tenant: str, dataset_id: str) -> str:
    return f"{dataset_objects_prefix(tenant, dataset_id)}images/"


def dataset_image(tenant: str, dataset_id: str, sha256: str) -> str:
    """Membership marker: one object per image, so concurrent uploads (several gateway
    replicas) never overwrite each other's membership, as a shared image list would."""
    return f"{dataset_images_prefix(tenant, dataset_id)}{check_sha256(sha256)}"


def dataset_classes_prefix(tenant: str, dataset_id: str) -> str:
    return f"{dataset_objects_prefix(tenant, dataset_id)}classes/"


def dataset_class(tenant: str, dataset_id: str, class_id: int) -> str:
    """A class added or edited after the dataset was created: one object per class id, so
    concurrent appends each get their own id (a conditional create) and lose nothing."""
    return f"{dataset_classes_prefix(tenant, dataset_id)}{check_index(class_id, 'class id')}.json"


def parse_dataset_class(key: str, tenant: str, dataset_id: str) -> int | None:
    prefix = dataset_classes_prefix(tenant, dataset_id)
    if not key.startswith(prefix) or not key.endswith(".json"):
        return None
    name = key[len(prefix) : -len(".json")]
    return int(name) if name.isdigit() and not name.startswith("0") else None


def parse_dataset_record(key: str, tenant: str) -> str | None:
    """``tenants/{t}/datasets/{d}.json`` -> d; None for other keys under the prefix
    (e.g. membership markers), so ``store.list(datasets_prefix(t))`` can be filtered."""
    prefix = datasets_prefix(tenant)
    if not isinstance(key, str) or not key.startswith(prefix) or not key.endswith(".json"):
        return None
    name = key[len(prefix) : -len(".json")]
    return name if _ID.fullmatch(name) else None


def parse_dataset_image(key: str, tenant: str) -> tuple[str, str] | None:
    """``tenants/{t}/datasets/{d}/images/{sha256}`` -> (d, sha256); None for other keys."""
    prefix = datasets_prefix(tenant)
    if not isinstance(key, str) or not key.startswith(prefix):
        return None
    parts = key[len(prefix) :].split("/")
    if len(parts) != 3 or parts[1] != "images":
        return None
    if not _ID.fullmatch(parts[0]) or not _SHA256.fullmatch(parts[2]):
        return None
    return parts[0], parts[2]


def dataset_labels_prefix(tenant: str, dataset_id: str) -> str:
    return f"{tenant_prefix(tenant)}labels/{check_id(dataset_id, 'dataset')}/"


def image_labels_prefix(tenant: str, dataset_id: str, sha256: str) -> str:
    """Prefix under which all label versions of one image live."""
    return f"{dataset_labels_prefix(tenant, dataset_id)}{check_sha256(sha256)}/"


def label(tenant: str, dataset_id: str, sha256: str, version: int) -> str:
    v = check_index(version, "label version")
    return f"{image_labels_prefix(tenant, dataset_id, sha256)}v{v}.png"


def label_provenance(tenant: str, dataset_id: str, sha256: str, version: int) -> str:
    """Beside ``label``: where that version came from (absent: drawn by hand)."""
    return label(tenant, dataset_id, sha256, version).removesuffix(".png") + ".json"


def cache_prefix(tenant: str, encoder_id: str | None = None) -> str:
    base = f"{tenant_prefix(tenant)}cache/"
    return base if encoder_id is None else f"{base}{check_encoder_id(encoder_id)}/"


def embedding(tenant: str, encoder_id: str, sha256: str) -> str:
    # Per tenant on purpose: a shared cache would leak other tenants' images by timing.
    return f"{cache_prefix(tenant, encoder_id)}{check_sha256(sha256)}.safetensors"


JOBS = "jobs"  # training jobs
PREDICTIONS = "predictions"  # prediction runs: the same record / events / cancel layout
EVALUATIONS = "evaluations"  # evaluations: prediction runs scored against labels
DATA_JOBS = "data-jobs"  # imports and embedding precomputes (vplab.datajobs)
JOB_FOLDERS = (JOBS, PREDICTIONS, EVALUATIONS, DATA_JOBS)


def _job_folder(folder: str) -> str:
    if folder not in JOB_FOLDERS:
        raise InvalidInput(f"unknown job folder {folder!r}")
    return folder


def jobs_prefix(tenant: str, folder: str = JOBS) -> str:
    return f"{tenant_prefix(tenant)}{_job_folder(folder)}/"


def job_prefix(tenant: str, job: str, folder: str = JOBS) -> str:
    return f"{jobs_prefix(tenant, folder)}{check_id(job, 'job')}/"


def job_state(tenant: str, job: str, folder: str = JOBS) -> str:
    return f"{job_prefix(tenant, job, folder)}state.json"


def job_events(tenant: str, job: str, folder: str = JOBS) -> str:
    return f"{job_prefix(tenant, job, folder)}events.jsonl"


def prediction_results_prefix(tenant: str, run: str, folder: str = PREDICTIONS) -> str:
    return f"{job_prefix(tenant, run, folder)}results/"


def prediction_result(tenant: str, run: str, sha256: str, folder: str = PREDICTIONS) -> str:
    """One target's result: written once (create-only), so no target is done twice."""
    name = check_sha256(sha256, "image_id")
    return f"{prediction_results_prefix(tenant, run, folder)}{name}.json"


def prediction_reviews_prefix(tenant: str, run: str) -> str:
    return f"{job_prefix(tenant, run, PREDICTIONS)}reviews/"


def prediction_review(tenant: str, run: str, sha256: str) -> str:
    """A reviewer's verdict on one result (accepted / edited / rejected), create-only."""
    return f"{prediction_reviews_prefix(tenant, run)}{check_sha256(sha256, 'image_id')}.json"


def parse_prediction_object(key: str, prefix: str) -> str | None:
    """``{prefix}{sha256}.json`` -> the image id; None for anything else."""
    parts = _under(key, prefix)
    if parts is None or len(parts) != 1 or not parts[0].endswith(".json"):
        return None
    name = parts[0].removesuffix(".json")
    return name if _SHA256.fullmatch(name) else None


def data_job_archive(tenant: str, job: str) -> str:
    """An import job's uploaded archive, from submission until the job ends."""
    return f"{job_prefix(tenant, job, DATA_JOBS)}archive"


def job_ckpt_prefix(tenant: str, job: str) -> str:
    return f"{job_prefix(tenant, job)}ckpt/"


def job_ckpt(tenant: str, job: str, step: int) -> str:
    k = check_index(step, "checkpoint step")
    return f"{job_ckpt_prefix(tenant, job)}step-{k}.safetensors"


def job_cancel(tenant: str, job: str, folder: str = JOBS) -> str:
    """Cancel marker: written by the API only, so it never races the worker's state writes."""
    return f"{job_prefix(tenant, job, folder)}cancel"


def active_jobs_prefix() -> str:
    return f"{SYSTEM}active-jobs/"


def active_job(tenant: str, job: str) -> str:
    """Index of unfinished jobs, so a restarted training service finds them without
    listing every tenant's objects."""
    return f"{active_jobs_prefix()}{check_id(tenant, 'tenant')}/{check_id(job, 'job')}"


def parse_active_job(key: str) -> tuple[str, str]:
    rest = key[len(active_jobs_prefix()) :] if key.startswith(active_jobs_prefix()) else ""
    parts = rest.split("/")
    if len(parts) != 2:
        raise InvalidInput(f"not an active-job key: {key!r}")
    return check_id(parts[0], "tenant"), check_id(parts[1], "job")


def models_prefix(tenant: str) -> str:
    return f"{tenant_prefix(tenant)}models/"


def model_prefix(tenant: str, model: str) -> str:
    return f"{models_prefix(tenant)}{check_id(model, 'model')}/"


def model_adapter(tenant: str, model: str) -> str:
    return f"{model_prefix(tenant, model)}{ADAPTER_WEIGHTS_FILE}"


def model_config(tenant: str, model: str) -> str:
    return f"{model_prefix(tenant, model)}{ADAPTER_CONFIG_FILE}"


def multiplexed_model(tenant: str, model: str) -> str:
    """The Serve multiplexing key of a tuned model: built after authentication, so the
    tenant part always is the caller's."""
    return f"{check_id(tenant, 'tenant')}/{check_id(model, 'model_id')}"


def parse_multiplexed_model(value: str) -> tuple[str, str]:
    tenant, sep, model = value.partition("/") if isinstance(value, str) else ("", "", "")
    if not sep:
        raise InvalidInput(f"not a multiplexed model key: {value!r}")
    return check_id(tenant, "tenant"), check_id(model, "model_id")


# --- parsing -----------------------------------------------------------------------------


def _under(key: object, prefix: str) -> list[str] | None:
    """The '/'-separated parts of ``key`` below ``prefix``; None if it is not below it."""
    if not isinstance(key, str) or not key.startswith(prefix):
        return None
    return key[len(prefix) :].split("/")


def parse_label(key: str, tenant: str) -> tuple[str, str, int] | None:
    """``tenants/{t}/labels/{d}/{sha256}/v{n}.png`` -> (d, sha256, n); None otherwise."""
    parts = _under(key, f"{tenant_prefix(tenant)}labels/")
    if parts is None or len(parts) != 3:
        return None
    if not _ID.fullmatch(parts[0]) or not _SHA256.fullmatch(parts[1]):
        return None
    m = _LABEL_VERSION.fullmatch("/" + parts[2])
    return (parts[0], parts[1], int(m.group(1))) if m else None


def parse_job_state(key: str, tenant: str, folder: str = JOBS) -> str | None:
    """``tenants/{t}/{folder}/{job}/state.json`` -> job; None for the job's other objects."""
    parts = _under(key, jobs_prefix(tenant, folder))
    if parts is None or len(parts) != 2 or parts[1] != "state.json":
        return None
    return parts[0] if _ID.fullmatch(parts[0]) else None


def parse_model_config(key: str, tenant: str) -> str | None:
    """``tenants/{t}/models/{model}/config.json`` -> model; None for other objects."""
    parts = _under(key, models_prefix(tenant))
    if parts is None or len(parts) != 2 or parts[1] != ADAPTER_CONFIG_FILE:
        return None
    return parts[0] if _ID.fullmatch(parts[0]) else None


def parse_label_version(key: str) -> int:
    """``.../labels/{dataset}/{sha256}/v{n}.png`` -> n."""
    m = _LABEL_VERSION.search(key) if isinstance(key, str) else None
    if m is None or m.end() != len(key) or "/labels/" not in key:
        raise InvalidInput(f"not a label key: {key!r}")
    return int(m.group(1))


def parse_ckpt_step(key: str) -> int:
    """``.../jobs/{job}/ckpt/step-{k}.safetensors`` -> k."""
    m = _CKPT_STEP.search(key) if isinstance(key, str) else None
    if m is None or m.end() != len(key):
        raise InvalidInput(f"not a checkpoint key: {key!r}")
    return int(m.group(1))


def latest_label_version(keys: list[str]) -> int | None:
    """Highest version among label keys (e.g. ``store.list(image_labels_prefix(...))``);
    the versions' provenance records (``label_provenance``) beside them are skipped."""
    versions = [parse_label_version(k) for k in keys if not k.endswith(".json")]
    return max(versions) if versions else None


def latest_ckpt_step(keys: list[str]) -> int | None:
    steps = [parse_ckpt_step(k) for k in keys]
    return max(steps) if steps else None
