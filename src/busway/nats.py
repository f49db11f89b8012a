"""The NATS JetStream channel; needs the ``nats`` extra: ``pip install 'busway[nats]'``."""

from busway.channels.nats import NatsChannel

__all__ = ["NatsChannel"]
