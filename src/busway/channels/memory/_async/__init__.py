"""The asyncio source of the in-memory channel's consumption; ``_sync`` is generated from it
by ``tools/unasync.py``."""
