"""NATS JetStream: a stream and a durable pull consumer, explicit ack, nak with delay.

nats-py is asyncio-only. The asyncio methods use a connection on the caller's event loop; the
sync methods run the same coroutines on busway's helper loop, through one connection living
there, and call the handler in the caller's thread. Delays: a message fetched before its
time is given back with ``nak(delay)``, and JetStream hands it out again when it is due.

``channel`` holds ``NatsChannel``; ``link`` one connection with its pull inbox; ``acks``
the publish acks it awaits; ``queued`` the work other threads hand to a connection's loop;
``hand`` a fetched batch handed out; ``confirmations`` the publish acks a batch awaits at
its end; ``streams`` the stream and consumer ``setup`` declares; ``headers`` how busway's
headers travel.
"""

from busway.errors import extra_required

with extra_required("the NATS JetStream channel (busway.nats)", "nats"):
    import nats.js  # noqa: F401 - before the modules below, which all take nats-py for granted

from busway.channels.nats.channel import NatsChannel
from busway.channels.nats.headers import HEADERS, decode_headers, encode_headers

__all__ = ["HEADERS", "NatsChannel", "decode_headers", "encode_headers"]
