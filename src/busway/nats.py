"""NATS JetStream: ``NatsChannel``, from its one public import path.

Needs the extra: ``pip install 'busway[nats]'``. The channel lives in
``busway.channels.nats``, which is internal.
"""

from busway.channels.nats import NatsChannel

__all__ = ["NatsChannel"]
