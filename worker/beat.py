"""Beat's scheduler: Celery's own, which makes the folder of its schedule file first.

`celeryconfig` names it (`beat_scheduler`), so building the settings creates nothing and
`celery -A worker beat` still starts on a data dir that does not exist yet. (Celery's
`beat_init` signal comes too late for this: beat opens the schedule file before sending it.)
"""

from __future__ import annotations

from pathlib import Path

from celery import beat


class PersistentScheduler(beat.PersistentScheduler):
    def setup_schedule(self) -> None:
        Path(self.schedule_filename).parent.mkdir(parents=True, exist_ok=True)
        super().setup_schedule()
