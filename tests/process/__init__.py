"""The process layer: tests that run the real `python -m shovel`, a script or a NATS server
in another process."""
