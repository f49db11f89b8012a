"""The asyncio source of ``busway.channels.redis``'s code with I/O;
``busway.channels.redis._sync`` is generated from it by ``tools/unasync.py``."""
