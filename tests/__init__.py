"""shovel's test suite."""
