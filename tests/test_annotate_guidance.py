"""visarl.annotate.guidance: each task's description of what to click, and the config fields that override it."""

from __future__ import annotations

import pytest

from visarl.annotate.guidance import GENERIC, PARTS, TASK_GUIDANCE, check_parts, task_guidance
from visarl.annotate.stage import AnnotateConfig
from visarl.config import ConfigError, build


def test_the_paper_tasks_have_guidance_and_reach_leaves_out_the_puck():
    assert set(TASK_GUIDANCE) == {"reach-v3", "faucet-open-v3", "door-open-v3", "drawer-open-v3"}
    reach = task_guidance("reach")  # short names resolve like everywhere else
    assert reach == task_guidance("reach-v3") and reach.parts == ("gripper", "goal")
    assert "puck plays no part" in reach.text
    assert task_guidance("door-open").parts == PARTS and "handle" in task_guidance("door-open").text
    assert task_guidance("button-press-v3") == GENERIC  # no entry: the generic description, not reach's


def test_config_text_and_parts_override_the_task_default():
    g = task_guidance("reach", text="Only the gripper.", parts=["goal", "gripper"])
    assert g.text == "Only the gripper." and g.parts == ("gripper", "goal")  # parts come back in PARTS order
    assert task_guidance("reach", parts=["object"]).text == TASK_GUIDANCE["reach-v3"].text
    for bad in (["puck"], ["gripper", "gripper"], []):
        with pytest.raises(ValueError, match="parts"):
            check_parts(bad)
    assert build(AnnotateConfig, {"task": "reach", "parts": ["gripper"]}).parts == ["gripper"]
    with pytest.raises(ConfigError, match="parts"):
        build(AnnotateConfig, {"task": "reach", "parts": ["elbow"]})
