"""Unit tests of shovel.storage: the asyncio client and rejected lines."""
