# Generated from src/busway/sql/_async/__init__.py by tools/unasync.py: do not edit.
# Change the asyncio source, then run `make generate`.
"""The asyncio source of ``busway.sql``'s code with I/O; ``busway.sql._sync`` is generated
from it by ``tools/unasync.py``."""
