# Generated from src/busway/channels/memory/_async/__init__.py by tools/unasync.py: do not edit.
# Change the asyncio source, then run `make generate`.
"""The asyncio source of the in-memory channel's consumption; ``_sync`` is generated from it
by ``tools/unasync.py``."""
