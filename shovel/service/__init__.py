"""The running service: its start, the pipeline of reader and storage tasks, the ordered stop,
the stop reports and the metrics it serves."""
