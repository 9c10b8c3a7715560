"""Weights: the checkpoint format and its metadata, where checkpoints live, checksummed resumable downloads
and importers of public checkpoints. `refine_cli.weights` is the public import path of all of it.
"""

from refine_cli.weights.catalog import (
    REMOTE_FILES,
    TORCHVISION_SEG,
    RemoteFile,
    find_remote,
    remote_file,
    remote_files,
)
from refine_cli.weights.fetch import Progress, download, fetch
from refine_cli.weights.format import (
    FORMAT,
    VERSION,
    ArchNotAvailableError,
    Checkpoint,
    CheckpointMeta,
    build_model,
    checkpoint_from_model,
    load_checkpoint,
    read_torch_file,
    save_checkpoint,
    state_dict_mismatch,
)
from refine_cli.weights.importers import (
    SOURCES,
    convert_remote,
    import_checkpoint,
    imported_path,
    read_class_names,
)
from refine_cli.weights.locations import (
    bundled_dir,
    cache_root,
    checkpoints_dir,
    downloads_dir,
    file_sha256,
    record_file,
)
from refine_cli.weights.store import (
    VerifyResult,
    WeightsEntry,
    available_names,
    list_weights,
    remote_entry,
    resolve,
    trunk_path,
    verify,
    verify_file,
)

__all__ = [
    "FORMAT", "REMOTE_FILES", "SOURCES", "TORCHVISION_SEG", "VERSION", "ArchNotAvailableError", "Checkpoint",
    "CheckpointMeta", "Progress", "RemoteFile", "VerifyResult", "WeightsEntry", "available_names",
    "build_model", "bundled_dir", "cache_root", "checkpoint_from_model", "checkpoints_dir", "convert_remote",
    "download", "downloads_dir", "fetch", "file_sha256", "find_remote", "import_checkpoint", "imported_path",
    "list_weights", "load_checkpoint", "read_class_names", "read_torch_file", "record_file", "remote_entry",
    "remote_file", "remote_files", "resolve", "save_checkpoint", "state_dict_mismatch", "trunk_path",
    "verify", "verify_file",
]
