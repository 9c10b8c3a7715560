"""The model contract (refine_cli/models/contract.py) and the registry's flags describe every registered network."""

from __future__ import annotations

import inspect

import pytest
import torch

from refine_cli import models
from refine_cli.models.contract import LoadsImageNetTrunk, Refines, TrainsWithAux
from refine_cli.models.registry import MODELS


def _built(name: str) -> torch.nn.Module:
    with torch.device("meta"):  # no memory, no initialisation cost
        return models.build(name, num_classes=5)


@pytest.mark.parametrize("name", list(MODELS))
def test_flags_match_the_builders(name: str):
    spec = MODELS[name]
    params = inspect.signature(spec.builder).parameters
    assert spec.fixed_classes == (spec.kind == "refiner" and "classes" in params)
    assert spec.aux_head == ("aux_loss" in params)


@pytest.mark.parametrize("name", list(MODELS))
def test_each_network_has_the_abilities_its_kind_needs(name: str):
    spec, model = MODELS[name], _built(name)
    if spec.kind == "base":
        assert isinstance(model, TrainsWithAux), f"{name}: `train base` needs forward_train"
        assert not isinstance(model, Refines)
    else:
        assert isinstance(model, Refines), f"{name}: the pipeline needs per_class, full_resolution, min_side"
        assert model.per_class != spec.fixed_classes
    if spec.trunk is not None:  # the trunk a spec names must have a network part that can load it
        assert any(isinstance(m, LoadsImageNetTrunk) for m in model.modules()), name
