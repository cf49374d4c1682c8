"""hubless-volume: the models volume format that the fetcher writes and the server reads.

What both sides must agree on lives here and nowhere else: the manifest
(:mod:`~hubless_volume.manifest`), where files are and the one safe way to join a path into
the volume (:mod:`~hubless_volume.paths`), the checks of every name read from a file
(:mod:`~hubless_volume.schema`), the file check (:mod:`~hubless_volume.check`), the task names
(:mod:`~hubless_volume.tasks`), the default catalog (:mod:`~hubless_volume.default_catalog`),
the fetcher's record of the previous generations it keeps (:mod:`~hubless_volume.previous`),
the writers' lock (:mod:`~hubless_volume.writelock`, taken by ``hubless-fetch`` and
``hubless-optimize``), the log line formats both programs write
(:mod:`~hubless_volume.logfmt`), the one way to write a file atomically
(:mod:`~hubless_volume.atomic`),
the one way to read the volume's own files without trusting what sits at their path
(:mod:`~hubless_volume.safeio`: regular files inside the volume, size-capped, never blocking;
:mod:`~hubless_volume.jsonfile` for its JSON files), the check that an ONNX artifact reads no
other file (:mod:`~hubless_volume.onnx_check`), the golden outputs
(:mod:`~hubless_volume.golden`) and the model signatures (:mod:`~hubless_volume.signing`,
whose library, the ``[signing]`` extra, is imported only when something is signed or
verified).

Why a distribution of its own rather than a module of the fetcher or the server: both images
install it (the server image must not carry the fetcher, and the fetcher image must not carry
torch), so it depends on the standard library only; and its version moves with the volume
format (``MANIFEST_VERSION``), not with either program.
"""

from __future__ import annotations

from hubless_volume.atomic import (
    atomic_output,
    atomic_place_file,
    atomic_symlink,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    fsync_dir,
)
from hubless_volume.check import (
    Problem,
    artifact_refusal,
    check_artifacts,
    check_derived,
    check_entry,
    plain_file_refusal,
    sha256_file,
)
from hubless_volume.default_catalog import catalog_file, default_preference
from hubless_volume.golden import (
    Golden,
    GoldenError,
    GoldenProbe,
    GoldenRecord,
    golden_folder,
    load_golden,
    save_golden,
)
from hubless_volume.jsonfile import read_json
from hubless_volume.manifest import (
    ARTIFACT_KINDS,
    MANIFEST_NAME,
    MANIFEST_VERSION,
    ArtifactRecord,
    FileRecord,
    Manifest,
    ManifestError,
    ManifestMissingError,
    ModelEntry,
    RejectedEntry,
    artifact_folder,
    utc_now,
)
from hubless_volume.onnx_check import (
    external_data_problems,
    external_data_problems_in_bytes,
)
from hubless_volume.paths import (
    SIGNATURE_FILES,
    SIGNATURE_KIND,
    VolumePathError,
    blobs_dir,
    derived_folder,
    inside,
    repo_dir,
    repo_folder_name,
    signature_relpath,
    snapshot_dir,
    snapshot_file,
)
from hubless_volume.previous import PREVIOUS_NAME, PreviousGeneration, PreviousGenerations
from hubless_volume.safeio import (
    MAX_CATALOG_BYTES,
    MAX_LOCK_BYTES,
    MAX_MANIFEST_BYTES,
    MAX_PREVIOUS_BYTES,
    VolumeFileError,
    open_regular_file,
    read_regular_file,
    read_volume_file,
)
from hubless_volume.schema import (
    SchemaError,
    check_blob_id,
    check_commit,
    check_name,
    check_relpath,
    check_repo_id,
    check_revision,
    check_sha256,
    check_size,
    check_task,
    check_timestamp,
)
from hubless_volume.signing import (
    KeyFileError,
    SignatureError,
    SigningUnavailableError,
    check_trusted_key,
    sign_model,
    signature_problem,
    verify_model,
)
from hubless_volume.tasks import TASKS
from hubless_volume.writelock import WRITE_LOCK_NAME, VolumeWriteLock

__version__ = "0.1.0"

__all__ = [
    "ARTIFACT_KINDS",
    "MANIFEST_NAME",
    "MANIFEST_VERSION",
    "MAX_CATALOG_BYTES",
    "MAX_LOCK_BYTES",
    "MAX_MANIFEST_BYTES",
    "MAX_PREVIOUS_BYTES",
    "PREVIOUS_NAME",
    "SIGNATURE_FILES",
    "SIGNATURE_KIND",
    "TASKS",
    "WRITE_LOCK_NAME",
    "ArtifactRecord",
    "FileRecord",
    "Golden",
    "GoldenError",
    "GoldenProbe",
    "GoldenRecord",
    "KeyFileError",
    "Manifest",
    "ManifestError",
    "ManifestMissingError",
    "ModelEntry",
    "PreviousGeneration",
    "PreviousGenerations",
    "Problem",
    "RejectedEntry",
    "SchemaError",
    "SignatureError",
    "SigningUnavailableError",
    "VolumeFileError",
    "VolumePathError",
    "VolumeWriteLock",
    "artifact_folder",
    "artifact_refusal",
    "atomic_output",
    "atomic_place_file",
    "atomic_symlink",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "blobs_dir",
    "catalog_file",
    "check_artifacts",
    "check_blob_id",
    "check_commit",
    "check_derived",
    "check_entry",
    "check_name",
    "check_relpath",
    "check_repo_id",
    "check_revision",
    "check_sha256",
    "check_size",
    "check_task",
    "check_timestamp",
    "check_trusted_key",
    "default_preference",
    "derived_folder",
    "external_data_problems",
    "external_data_problems_in_bytes",
    "fsync_dir",
    "golden_folder",
    "inside",
    "load_golden",
    "open_regular_file",
    "plain_file_refusal",
    "read_json",
    "read_regular_file",
    "read_volume_file",
    "repo_dir",
    "repo_folder_name",
    "save_golden",
    "sha256_file",
    "sign_model",
    "signature_problem",
    "signature_relpath",
    "snapshot_dir",
    "snapshot_file",
    "utc_now",
    "verify_model",
]
