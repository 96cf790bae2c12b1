"""The team's Celery settings (Celery's conventional module name)."""

import os

broker_url = os.environ["TEAM_BROKER_URL"]
result_backend = os.environ["TEAM_BROKER_URL"]
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
broker_connection_retry_on_startup = True
