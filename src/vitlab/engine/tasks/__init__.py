"""The tasks `vitlab train --task NAME` knows; a new task is a `Task` subclass added to TASKS."""

from __future__ import annotations

import difflib

from vitlab.engine.tasks.audio import AudioConfig, AudioTask
from vitlab.engine.tasks.base import Task, TaskConfig
from vitlab.engine.tasks.classification import (
    ClassificationConfig,
    ClassificationTask,
    DistillationConfig,
    DistillationTask,
)
from vitlab.engine.tasks.clip import ClipTask, ClipTaskConfig
from vitlab.engine.tasks.detection import DetectionConfig, DetectionTask
from vitlab.engine.tasks.dino import DinoTask, DinoTaskConfig
from vitlab.engine.tasks.lseg import LSegTask, LSegTaskConfig
from vitlab.engine.tasks.mae import MaeTask, MaeTaskConfig
from vitlab.engine.tasks.multilabel import MultiLabelConfig, MultiLabelTask
from vitlab.engine.tasks.simclr import SimCLRConfig, SimCLRTask, SupConConfig, SupConTask
from vitlab.engine.tasks.video import VideoConfig, VideoTask
from vitlab.errors import ConfigError

_ALL = (ClassificationTask(), DistillationTask(), MultiLabelTask(), DetectionTask(), ClipTask(), LSegTask(),
        SimCLRTask(), SupConTask(), DinoTask(), MaeTask(), VideoTask(), AudioTask())  # fmt: skip
TASKS: dict[str, Task] = {t.name: t for t in _ALL}


def get_task(name: str) -> Task:
    if name not in TASKS:
        close = difflib.get_close_matches(name, list(TASKS), n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise ConfigError(f"--task {name!r} is not a task; choose one of {', '.join(TASKS)}{hint}")
    return TASKS[name]


__all__ = [
    "TASKS",
    "AudioConfig",
    "ClassificationConfig",
    "ClipTaskConfig",
    "DetectionConfig",
    "DinoTaskConfig",
    "DistillationConfig",
    "LSegTaskConfig",
    "MaeTaskConfig",
    "MultiLabelConfig",
    "SimCLRConfig",
    "SupConConfig",
    "Task",
    "TaskConfig",
    "VideoConfig",
    "get_task",
]
