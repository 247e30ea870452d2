"""The tasks, and the one way the modes reach them: a task's :class:`~mbtasks.tasks.spec.TaskSpec`.

A task is a package ``mbtasks/tasks/<name>/`` (LightningModule, predictor, export, data check,
``SPEC``) plus ``conf/task/<name>.yaml``. The config's ``task._target_`` names the LightningModule;
:func:`spec_for_config` / :func:`spec_of` return its spec. No mode lists the tasks.
"""

from mbtasks.tasks.loading import (
    build_task,
    check_checkpoint_task,
    load_predictor,
    load_task,
    spec_for_config,
    spec_of,
    task_class,
)

__all__ = [
    "build_task",
    "check_checkpoint_task",
    "load_predictor",
    "load_task",
    "spec_for_config",
    "spec_of",
    "task_class",
]
