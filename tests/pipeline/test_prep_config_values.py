"""Values a build's :class:`PrepConfig` may hold (issue 23, item 8): each field of its type and finite, so what
``--like`` or a caller hands it is one line naming the field, never an OverflowError or a NaN clamp."""
from __future__ import annotations

import math

import pytest

from pipeline.config import PrepConfig


@pytest.mark.parametrize("changes, why", [
    ({"air_hu": math.nan}, "air_hu must be a finite number, got nan"),
    ({"air_hu": True}, "air_hu must be a finite number, got True"),
    ({"max_voxels": math.inf}, "max_voxels must be a whole number, got inf"),
    ({"dtype": ["float16"]}, r"dtype must be a text, got \['float16'\]"),
    ({"ct_window": (250.0, -200.0)}, r"ct_window must be lo < hi \(HU\), got \(250.0, -200.0\)"),
    ({"ct_window": (-200.0, math.inf)}, "ct_window must be a list of two finite numbers or null"),
    ({"clip_percentiles": ("1", "99")}, "clip_percentiles must be a list of two finite numbers"),
    ({"chunks": (64, 64, 1.5)}, "chunks must be a list of three whole numbers"),
    ({"foreground_samples": -1}, "foreground_samples must be >= 0"),
])
def test_prep_config_refuses_values_of_the_wrong_type_or_range(changes, why):
    with pytest.raises(ValueError, match=why) as err:
        PrepConfig(**changes)
    assert "\n" not in str(err.value)


def test_a_good_config_round_trips():
    cfg = PrepConfig(ct_window=(-200, 250), air_hu=-1000, clip_percentiles=[1, 99])
    assert PrepConfig.from_dict(cfg.to_dict()) == cfg
