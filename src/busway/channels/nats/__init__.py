"""NATS JetStream: a stream and a durable pull consumer, explicit ack, nak with delay.

nats-py is asyncio-only. The asyncio methods use a connection on the caller's event loop; the
sync methods run the same coroutines on busway's helper loop, through one connection living
there, and call the handler in the caller's thread. Delays: a message fetched before its
time is given back with ``nak(delay)``, and JetStream hands it out again when it is due.

The modules, under the same names for the same concepts in every broker package:

- ``channel``: the channel, ``NatsChannel``.
- ``link``: the connection edge: one connection on the event loop that made it, with its pull
  inbox.
- ``wire``: a message on the wire: busway's headers in one NATS header, as a JSON object.
- ``deferred``: a batch's sends, deferred until before its acknowledgement: publishes whose
  JetStream acks are awaited once, then.
- ``hand``: a batch in hand: a fetched batch handed out one message at a time, and what is
  left to give back.

NATS's own: ``acks`` the JetStream acks a connection's publishes await, on an inbox of its
own; ``queued`` the work other threads hand to a connection's loop; ``topology`` the stream
and consumer ``setup`` declares, and a refused publish explained.

``busway.channels.nats`` is internal: the one public import path is ``busway.nats.NatsChannel``.
"""

from busway.errors import extra_required

with extra_required("the NATS JetStream channel (busway.nats)", "nats"):
    import nats.js  # noqa: F401 - before the modules below, which all take nats-py for granted

from busway.channels.nats.channel import NatsChannel

__all__ = ["NatsChannel"]
