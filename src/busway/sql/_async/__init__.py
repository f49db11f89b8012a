"""The asyncio source of ``busway.sql``'s code with I/O; ``busway.sql._sync`` is generated
from it by ``tools/unasync.py``."""
