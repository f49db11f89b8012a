# Generated from src/busway/_internal/_async/__init__.py by tools/unasync.py: do not edit.
# Change the asyncio source, then run `make generate`.
"""The asyncio source of the core's code with I/O; ``busway._internal._sync`` is generated
from it by ``tools/unasync.py``."""
