"""Unit tests of shovel.sources: syntax, records, rotations, the blocking-call executor."""
