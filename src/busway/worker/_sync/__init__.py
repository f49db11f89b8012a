# Generated from src/busway/worker/_async/__init__.py by tools/unasync.py: do not edit.
# Change the asyncio source, then run `make generate`.
"""The asyncio source of ``busway.worker``'s loop; ``busway.worker._sync`` is generated
from it by ``tools/unasync.py``."""
