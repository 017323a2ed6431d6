"""Prefect flows: nap, full_sleep (and later the experiments).

Importing this package sets the Prefect settings that PLATFORM.md found necessary here, unless
the user set them: a 90 s ephemeral-server start-up budget (first start runs migrations) and
analytics off (else a noisy "database is locked" traceback on 2 cores).
"""

import os

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
