"""decoder_channels: smp's decoder widths as a config field, refused by name where they cannot apply."""

from __future__ import annotations

import pytest

from selftune.errors import ConfigError
from selftune.trainable.config import TrainConfig
from selftune.trainable.model import build_model


def test_the_light_decoder_is_built_and_is_smaller() -> None:
    light = build_model(TrainConfig.from_dict({"arch": "Unet", "encoder": "tu-mobilenetv3_small_050",
                                               "decoder_channels": "64,32,16,16,16"}), 7)
    default = build_model(TrainConfig.from_dict({"arch": "Unet", "encoder": "tu-mobilenetv3_small_050"}), 7)
    assert light.segmentation_head[0].in_channels == 16 and default.segmentation_head[0].in_channels == 16
    assert sum(p.numel() for p in light.parameters()) < sum(p.numel() for p in default.parameters()) / 3
    deeplab = build_model(TrainConfig.from_dict({"arch": "DeepLabV3Plus", "encoder": "resnet18",
                                                 "decoder_channels": [64]}), 3)
    assert deeplab.segmentation_head[0].in_channels == 64


@pytest.mark.parametrize(("changes", "message"), [
    ({"arch": "Unet", "decoder_channels": [64, 32]}, "decoder_channels has 2 values, arch 'Unet' takes 5"),
    ({"arch": "DeepLabV3Plus", "decoder_channels": [64, 32]}, "decoder_channels has 2 values, arch 'DeepLabV3Plus' "
                                                             "takes 1"),
    ({"arch": "Unet", "decoder_channels": [64, 32, 0, 16, 16]}, r"decoder_channels\[2\] must be a whole number of "
                                                                "channels >= 1, got 0"),
    ({"arch": "Unet", "decoder_channels": [64, 32, -8, 16, 16]}, r"decoder_channels\[2\] must be"),
    ({"arch": "FPN", "decoder_channels": [64]}, "decoder_channels is \\[64\\], but arch 'FPN' has no such knob"),
    ({"arch": "Unet", "decoder_channels": [64, 32, 16.5, 16, 16]}, r"decoder_channels\[2\] must be a whole number"),
])
def test_bad_decoder_channels_fail_by_name(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict(changes)


def test_the_wide_space_searches_the_decoder_where_the_architecture_has_one() -> None:
    import optuna

    from selftune.spaces import SpaceContext, check_space
    from selftune.spaces.library import decoder
    from selftune.spaces.params import apply_params

    unet = TrainConfig.from_dict({"arch": "Unet", "encoder": "tu-mobilenetv3_small_050"})
    report = check_space("wide", unet, SpaceContext(7, 1200, 50, arch="Unet"))
    assert report.params["decoder_channels"].choices[2] == "64,32,16,16,16"
    assert "decoder_channels" not in check_space("wide", unet.replace(arch="FPN"),
                                                 SpaceContext(7, 1200, 50, arch="FPN")).params
    trial = optuna.create_study().ask()
    decoder(trial, SpaceContext(arch="Unet"))
    assert len(apply_params(unet, trial.params).decoder_channels) == 5  # a trial's choice is a valid config
