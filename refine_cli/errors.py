"""Domain errors. Raised deep in the library, translated once at the CLI edge into one red line.

Every message says what went wrong *and* what to do next. `exit_code` follows the CLI convention:
1 for a failed run (bad file, bad checkpoint, failed download), 2 for a usage error: anything wrong in the
command itself, such as a name, path, split or folder that does not exist or cannot be used.
"""

from __future__ import annotations

import errno


class RefineError(Exception):
    """Base of every error refine-cli raises on purpose."""

    exit_code = 1


class UsageError(RefineError):
    """The command or call was asked for something that cannot work (unknown name, bad option)."""

    exit_code = 2


class UnknownNameError(UsageError, KeyError):
    """A registry lookup failed; the message lists the valid names."""

    def __init__(self, kind: str, name: str, valid: list[str] | tuple[str, ...]):
        self.kind, self.name, self.valid = kind, name, tuple(valid)
        super().__init__(f"unknown {kind} '{name}'; choose one of: {', '.join(sorted(valid))}")

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class DeviceError(UsageError):
    """A requested device is not available (never silently replaced by the CPU)."""


class WeightsError(RefineError):
    """A checkpoint cannot be used: missing, corrupt, wrong format, wrong keys or shapes."""


class WeightsNotFoundError(WeightsError, UsageError):
    """A checkpoint path given in the command is not there (a usage error)."""


class ChecksumError(WeightsError):
    """A file's sha256 does not match the expected one."""


class DownloadError(WeightsError):
    """A download failed or was cut short."""


class InputError(RefineError):
    """An input file (image or mask) cannot be read or does not fit."""


class DataError(RefineError):
    """A dataset is missing files or holds pairs that do not fit (reported before training starts)."""


class DatasetNotFoundError(DataError, UsageError):
    """The dataset folder, split or list named in the command is not there (a usage error)."""


class TrainingError(RefineError):
    """Training cannot go on (non-finite loss, incompatible resume)."""


class DivergedError(TrainingError):
    """The loss or the weights became NaN or infinite by `step`: the run stopped there."""

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step


# Writes refused for good: every later write to the same place fails too (disk full, quota spent, read-only).
REFUSED_FOR_GOOD = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def refused_for_good(exc: BaseException) -> OSError | None:
    """The OSError behind `exc` (itself, or what it was raised from or during) when its errno is one of
    REFUSED_FOR_GOOD; else None."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in REFUSED_FOR_GOOD:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
