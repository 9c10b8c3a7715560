"""A disk with little room left, for tests of what refine-cli does when the disk refuses writes for good."""

from __future__ import annotations

import builtins
import errno
from typing import Any


class LimitedDisk:
    """Stands in for `open` in one module (monkeypatch it there): the files it opens for writing take `room` bytes
    in all, then every write raises ENOSPC as a full disk's does. Raise `room` to make space."""

    def __init__(self, room: int) -> None:
        self.room = room

    def open(self, file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = builtins.open(file, mode, *args, **kwargs)
        return _File(handle, self) if any(c in mode for c in "wax") else handle


class _File:
    def __init__(self, handle: Any, disk: LimitedDisk) -> None:
        self.handle, self.disk = handle, disk

    def write(self, data: bytes) -> int:
        if len(data) > self.disk.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.disk.room -= len(data)
        return self.handle.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.handle, name)

    def __enter__(self) -> _File:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.close()
