"""The host allocator settings the `refine-cli` command applies before a run."""

from __future__ import annotations

import platform

import pytest

from refine_cli import allocator


def test_glibc_takes_both_settings(monkeypatch: pytest.MonkeyPatch):
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt's settings are glibc's")
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"):
        monkeypatch.delenv(name, raising=False)
    assert allocator.keep_freed_memory() is True


@pytest.mark.parametrize("name", ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"])
def test_the_user_s_own_settings_are_left_alone(monkeypatch: pytest.MonkeyPatch, name: str):
    monkeypatch.setenv(name, "1")
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda _: pytest.fail("mallopt called despite " + name))
    assert allocator.keep_freed_memory() is False


def test_a_c_library_without_mallopt_changes_nothing(monkeypatch: pytest.MonkeyPatch):
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"):
        monkeypatch.delenv(name, raising=False)

    class NoMallopt:  # macOS's libSystem, for instance
        pass

    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda _: NoMallopt())
    assert allocator.keep_freed_memory() is False
