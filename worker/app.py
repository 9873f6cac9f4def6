"""The worker's Celery app: the shared configuration (core/tasks.py) with this package's tasks registered.

`celery -A worker.app:celery_app worker …` (what `ganserve worker` runs)."""

from core.settings import get_settings
from core.tasks import create_celery

celery_app = create_celery(get_settings(), include=("worker.tasks",))
