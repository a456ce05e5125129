"""The controls InstantID, FaceID and PuLID share (methods/controls.py) mean the same in each method's parameters."""

from __future__ import annotations

import dataclasses

import pytest

from idforge.engine.fewstep import get_few_step_preset
from idforge.errors import ParameterError
from idforge.methods.controls import IdentityControls
from idforge.methods.faceid.core import FaceIDParams
from idforge.methods.instantid.params import InstantIDParams
from idforge.methods.presets import DEFAULT_IDENTITY
from idforge.methods.pulid.core import PulidParams

PARAMS = [InstantIDParams, FaceIDParams, PulidParams]


@pytest.mark.parametrize("params_class", PARAMS)
@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"start_at": 0.6, "end_at": 0.2}, "end_at"),
        ({"start_at": -0.1}, "start_at"),
        ({"end_at": 1.5}, "end_at"),
        ({"det_size": 32}, "det_size"),
        ({"pick": "tallest"}, "pick"),
    ],
)
def test_each_method_refuses_a_bad_window_or_face_choice_naming_the_field(params_class, values, named):
    with pytest.raises(ParameterError) as caught:
        params_class(**values)
    assert caught.value.name == named


@pytest.mark.parametrize("params_class", PARAMS)
def test_each_method_declares_the_shared_controls_and_checks_them(params_class):
    names = {item.name for item in dataclasses.fields(params_class)}
    assert issubclass(params_class, IdentityControls)
    assert {"start_at", "end_at", "pick", "det_size"} <= names
    assert set(params_class.PRESET_STRENGTHS) <= names and params_class.PRESET_STRENGTHS
    assert params_class(start_at=0.25, end_at=0.75).window() == {"start_at": 0.25, "end_at": 0.75}


@pytest.mark.parametrize("params_class", PARAMS)
@pytest.mark.parametrize("preset", ["lightning-4", "lcm", "pulid-v1.1-lightning", None])
def test_with_preset_fills_only_the_unset_strengths_from_the_preset(params_class, preset):
    advice = get_few_step_preset(preset).identity if preset else {}
    resolved = params_class().with_preset(preset)
    for name, key in params_class.PRESET_STRENGTHS.items():
        assert getattr(resolved, name) == advice.get(key, DEFAULT_IDENTITY[key])
        given = params_class(**{name: 0.37}).with_preset(preset)
        assert getattr(given, name) == 0.37  # a given strength wins over the preset
    assert type(resolved) is params_class


def test_the_shared_controls_keep_each_methods_face_choice_default():
    assert InstantIDParams().pick == "largest" and PulidParams().pick == "largest"
    assert FaceIDParams().pick == "score"  # FaceID's reference takes the most confident face
