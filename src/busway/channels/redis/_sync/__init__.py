# Generated from src/busway/channels/redis/_async/__init__.py by tools/unasync.py: do not edit.
# Change the asyncio source, then run `make generate`.
"""The asyncio source of ``busway.channels.redis``'s code with I/O;
``busway.channels.redis._sync`` is generated from it by ``tools/unasync.py``."""
