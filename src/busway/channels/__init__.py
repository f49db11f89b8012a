"""Channels carry messages between a sender and a worker; one module per transport."""

from busway.channels.base import Channel, ChannelContext, Delivery, Envelope
from busway.channels.memory import InMemoryChannel

__all__ = ["Channel", "ChannelContext", "Delivery", "Envelope", "InMemoryChannel"]
