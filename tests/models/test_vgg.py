"""The shared VGG-16 trunk's BatchNorm option: off by default (published layout), on in the compact variants."""

from __future__ import annotations

import torch

from refine_cli import models
from refine_cli.models.vgg import CONV_NAMES, VGG16Trunk


def test_batch_norm_adds_one_norm_per_conv_and_changes_nothing_else():
    plain = set(VGG16Trunk(width=0.125).state_dict())
    normed = set(VGG16Trunk(width=0.125, batch_norm=True).state_dict())
    assert plain < normed
    extra = {k.split(".")[0] for k in normed - plain}
    assert extra == {n.replace("conv", "bn") for n in CONV_NAMES}


def test_batch_norm_normalises_conv_outputs_in_training():
    trunk = VGG16Trunk(width=0.125, batch_norm=True).train()
    with torch.no_grad():
        trunk.conv1_1.bias.fill_(5.0)  # a large offset that BatchNorm must remove
    seen = []

    def keep(module, inputs, output):  # returns None: a hook's return value would replace the output
        seen.append(output.detach().clone())  # cloned: the trunk's ReLU runs in place afterwards

    trunk.bn1_1.register_forward_hook(keep)
    trunk.forward_trunk(torch.randn(4, 3, 32, 32))
    mean = seen[0].mean(dim=(0, 2, 3))
    assert mean.abs().max() < 1e-4


def test_compact_specs_use_batch_norm_and_full_size_ones_do_not():
    assert models.spec("fcn8s_vgg16_compact").defaults["batch_norm"] is True
    assert models.spec("deeplab_largefov_vgg16_compact").defaults["batch_norm"] is True
    assert models.spec("spn_universal_compact").defaults["guidance_batch_norm"] is True
    full = models.build("fcn8s_vgg16", num_classes=2, width=0.125)  # same builder, published layout
    assert not any(k.startswith("bn") for k in full.state_dict())
    compact = models.build("fcn8s_vgg16_compact", num_classes=2)
    assert "bn1_1.running_mean" in compact.state_dict()
