"""shovel: move newline-delimited records into durable storage without losing one on stop.

Kept import-free so that `python -m shovel` can install its signal handlers before anything
heavy is imported.
"""
