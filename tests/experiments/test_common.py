"""experiments/common.py: a run folder is trained once, resumed after a kill, reused when finished, and refused
for other settings."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from experiments import common
from refine_cli.errors import UsageError
from refine_cli.train import StepLogged


class _Kill(Exception):
    pass


@pytest.mark.slow
def test_killed_runs_resume_and_finished_runs_are_reused(world: Path, tmp_path: Path):
    recipe = common.Recipe(steps=4, batch_size=2, crop_size=32, log_every=1, checkpoint_every=2)
    config = common.base_config(recipe, world, "deeplab_largefov_vgg16_compact", {"width": 0.125, "fc_channels": 8})
    run = tmp_path / "run"

    def kill_at_3(event: object) -> None:
        if isinstance(event, StepLogged) and event.step == 3:
            raise _Kill  # after the checkpoint at step 2

    with pytest.raises(_Kill):
        common.train_run("tiny", config, run, settings={"note": 1}, on_event=kill_at_3)
    assert (run / "last.pt").is_file() and not (run / "model.pt").exists()

    resumed = common.train_run("tiny", config, run, settings={"note": 1})
    assert not resumed.reused and resumed.model_path == run / "model.pt" and 0 <= resumed.val["miou"] <= 1
    assert [s for s, _ in resumed.train_series("loss")] == [1, 2, 3, 4]

    again = common.train_run("tiny", config, run, settings={"note": 1})
    assert again.reused and again.val == pytest.approx(resumed.val) and again.records == resumed.records

    with pytest.raises(UsageError, match=r"other settings \(settings.note: 1 -> 2\)"):
        common.train_run("tiny", config, run, settings={"note": 2})
    with pytest.raises(UsageError, match=r"config.loop.steps: 4 -> 5"):
        common.train_run("tiny", replace(config, loop=replace(config.loop, steps=5)), run, settings={"note": 1})


def test_markdown_and_percentages():
    assert common.markdown_table(["a", "b"], [[1, "x"]]) == "| a | b |\n|---|---|\n| 1 | x |"
    assert common.pct(0.12345) == "12.35" and common.pct(-0.01, signed=True) == "-1.00" and common.pct(None) == "-"
