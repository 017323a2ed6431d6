"""The settings sections (pydantic, a description per field: the CLI help and the Prefect forms).

They sit at the bottom of the package, below every layer that reads them; ``sleepwake.config``
assembles them into ``Settings`` and loads presets and ``--set`` overrides.
"""
