"""`foreground_ious`: a multi-class base network's foreground (every class but background) scored against binary
object masks, with the network's output replaced by a known map."""

from __future__ import annotations

import math

import torch

from refine_cli.bench.workload import random_checkpoint
from refine_cli.data import Sample
from refine_cli.evaluation import foreground_ious
from refine_cli.pipeline import Refiner


def test_foreground_iou_counts_every_non_background_class(tmp_path, monkeypatch):
    path = random_checkpoint("espnet", tmp_path, classes=("background", "cat", "dog"), p=1, q=1)
    model = Refiner(base=path, refiner=None, device="cpu", batch_size=1)
    # Predicted: background in column 0, "cat" in column 1, "dog" in columns 2-3.
    labels = torch.tensor([[0, 1, 2, 2]] * 2)
    probs = torch.nn.functional.one_hot(labels, 3).permute(2, 0, 1)[None].float()
    monkeypatch.setattr(model.engine, "base_probs", lambda x: probs)
    image = torch.zeros(3, 2, 4, dtype=torch.uint8)
    truth = torch.tensor([[0, 0, 1, 1], [255, 1, 1, 0]])  # object in columns 2-3 and (1, 1); (1, 0) ignored
    empty = torch.zeros(2, 4, dtype=torch.long)
    scores = foreground_ious([Sample(image, truth, "a"), Sample(image, empty, "b")], model)
    # Foreground predicted in columns 1-3 (6 pixels), true at 4 pixels, all inside it; (1, 0) is not counted.
    assert [s.name for s in scores] == ["a", "b"]
    assert scores[0].iou == 4 / 6
    assert scores[1].iou == 0.0
    monkeypatch.setattr(model.engine, "base_probs", lambda x: torch.nn.functional.one_hot(
        torch.zeros(2, 4, dtype=torch.long), 3).permute(2, 0, 1)[None].float())
    assert math.isnan(foreground_ious([Sample(image, empty, "c")], model)[0].iou)  # nothing on either side
