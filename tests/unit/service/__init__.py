"""Unit tests of shovel.service: the pipeline and the metrics, in-process."""
