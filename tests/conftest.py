"""Shared test helpers. `tv` (or `import_torchvision()`) gives torchvision for parity tests against its
models; tests using it skip cleanly where it cannot be imported."""

from __future__ import annotations

from types import ModuleType

import pytest
import torch

# torchvision is installed without its compiled extension, yet its fake-kernel registrations refer to
# these two operators: their schemas must exist before `import torchvision`. The Library object must
# stay alive (its registrations vanish when it is garbage collected), hence a module global.
_TORCHVISION_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_torchvision_library: torch.library.Library | None = None


def import_torchvision() -> ModuleType:
    """Define the missing `torchvision::nms/qnms` schemas once (never twice: a second definition, or a
    second "DEF" library, raises), then import torchvision or skip the calling test."""
    global _torchvision_library
    missing = [name for name in _TORCHVISION_SCHEMAS if not hasattr(torch.ops.torchvision, name)]
    if missing and _torchvision_library is None:
        try:
            _torchvision_library = torch.library.Library("torchvision", "DEF")
        except RuntimeError:  # another module already holds the "DEF" library: add to it
            _torchvision_library = torch.library.Library("torchvision", "FRAGMENT")
    for name in missing:
        _torchvision_library.define(_TORCHVISION_SCHEMAS[name])
    return pytest.importorskip("torchvision")


@pytest.fixture(scope="session")
def tv() -> ModuleType:
    """The torchvision module (skips the test where it is not importable)."""
    return import_torchvision()


REAL_DATA_ENV = "REFINE_CLI_REAL_DATA"


@pytest.fixture(scope="session")
def real_data() -> "Path":
    """The real photographs, masks and pretrained files beside the checkout (`../shared/real`, or the folder named
    by REFINE_CLI_REAL_DATA). Tests on real data never skip: a missing folder fails them, naming where it looked."""
    import os
    from pathlib import Path

    root = Path(os.environ.get(REAL_DATA_ENV) or Path(__file__).resolve().parents[1].parent / "shared" / "real")
    assert (root / "camvid").is_dir() and (root / "davis").is_dir() and (root / "weights").is_dir(), (
        f"the real data are not at {root}: put shared/real beside the checkout or set {REAL_DATA_ENV}"
    )
    return root
