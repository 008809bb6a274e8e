"""Shared-memory frame pool (memfd slots with generation counters)."""
