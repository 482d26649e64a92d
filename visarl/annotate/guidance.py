"""What to click on each task: one description that the page shows and the simulated annotator follows.

ViSaRL's annotators click "the end-effector position, typically with more saliency concentrated near the
gripper tip, as well as the task specific objects and the goal location" (Sec. III-B). Which of those matter
depends on the task: reach has a puck on the table that the task ignores. A :class:`Guidance` names the
parts that matter (``gripper``, ``object``, ``goal``) and says in words what to click. The page shows the
text and offers the parts as optional click labels; the simulated annotator gives the parts not named no
clicks, so a person's maps and the simulated ones agree on what matters.

The defaults of the paper's four tasks are in :data:`TASK_GUIDANCE`; a config's ``guidance`` and ``parts``
override them, and any other task gets :data:`GENERIC` until its config says more.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

PARTS = ("gripper", "object", "goal")
"""The parts a click can be labelled with, in keypoint order (see :func:`visarl.envs.keypoint_names`)."""


@dataclass(frozen=True)
class Guidance:
    """What to click on a task: a sentence for the annotator and the parts it names."""

    text: str
    parts: tuple[str, ...]


TASK_GUIDANCE: dict[str, Guidance] = {
    "reach-v3": Guidance("Click the gripper tip and the goal; the puck plays no part.", ("gripper", "goal")),
    "faucet-open-v3": Guidance(
        "Click the gripper tip, the faucet handle it turns and the goal, where the handle has to go.", PARTS
    ),
    "door-open-v3": Guidance(
        "Click the gripper tip, the door handle it pulls and the goal, where the handle ends up.", PARTS
    ),
    "drawer-open-v3": Guidance(
        "Click the gripper tip, the drawer handle it pulls and the goal, where the handle ends up.", PARTS
    ),
}
"""Guidance of the paper's tasks, by full Meta-World name."""

GENERIC = Guidance("Click the gripper tip, the object it has to handle and the goal.", PARTS)
"""Guidance of a task without an entry in :data:`TASK_GUIDANCE`."""


def check_parts(parts: Sequence[str]) -> tuple[str, ...]:
    """``parts`` as a tuple in :data:`PARTS` order; ``ValueError`` for an unknown, repeated or empty list."""
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts or len(set(parts)) != len(parts):
        raise ValueError(f"parts must be distinct names among {list(PARTS)}, got {list(parts)}")
    return tuple(p for p in PARTS if p in parts)


def task_guidance(task: str, text: str = "", parts: Sequence[str] = ()) -> Guidance:
    """The guidance of ``task`` (short or full name), with ``text`` / ``parts`` replacing the default's when given."""
    try:
        from visarl.envs import resolve_task  # lazy: importing visarl.envs loads MuJoCo and picks its GL backend

        full = resolve_task(task)
    except (ValueError, ImportError):
        full = task
    base = TASK_GUIDANCE.get(full, GENERIC)
    return Guidance(text or base.text, check_parts(parts) if parts else base.parts)
