"""The unit layer: tests that run in the test process alone, with no other process."""
