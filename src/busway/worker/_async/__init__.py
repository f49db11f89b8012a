"""The asyncio source of ``busway.worker``'s loop; ``busway.worker._sync`` is generated
from it by ``tools/unasync.py``."""
