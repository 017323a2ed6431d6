"""The memory served to chat apps: an OpenAI-compatible HTTP API (``sleepwake serve``)."""
