"""`RUN_DIR/metrics.jsonl`: one JSON object per line, appended as the run goes. Training lines carry
{"kind": "train", "step", "loss", "lr", "images_per_s", "step_s", "time"}; validation lines
{"kind": "val", "step", "split", "miou", ...}. A resumed run first drops the lines past its checkpoint."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from refine_cli.io import atomic_write


def _plain(value: Any) -> Any:
    # JSON has no NaN: a score without pixels to stand on is written as null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLog:
    """Appends records to `path` (only where `enabled`: rank 0)."""

    def __init__(self, path: Path, *, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled

    def start(self, *, resume_step: int | None) -> None:
        """A fresh run empties the file; a resumed one keeps the records up to `resume_step`."""
        if not self.enabled:
            return
        if resume_step is None:
            self.path.unlink(missing_ok=True)
            return
        kept = [r for r in read_records(self.path) if int(r.get("step", 0)) <= resume_step]
        text = "".join(json.dumps(r) + "\n" for r in kept)
        atomic_write(self.path, lambda f: f.write(text.encode()))

    def append(self, record: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({k: _plain(v) for k, v in record.items()}) + "\n")


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every complete record of a metrics file (a line cut short by a kill is skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            records.append(value)
    return records
