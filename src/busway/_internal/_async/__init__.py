"""The asyncio source of the core's code with I/O; ``busway._internal._sync`` is generated
from it by ``tools/unasync.py``."""
