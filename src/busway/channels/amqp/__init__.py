"""``AmqpChannel``: messages in a RabbitMQ queue, through aio-pika.

``setup`` declares a durable queue. Messages are persistent and published with confirms; a
consumer acknowledges a message once its handling returned, and gives it back (``basic.nack``
with requeue) when that raised. Headers travel as AMQP headers, typed; the body as the body.

With ``partitions=N`` the channel keeps ordering keys: N queues, each with a single active
consumer, a key's messages all in one of them, handed out one at a time, the queues shared
out among the workers consuming them; ``priorities=True`` makes the queue a priority queue.

Delays need no plugin: a delayed message waits in a queue ``<queue>.wait.<ms>`` whose every
message lives ``ms`` milliseconds (a power of two) and then dead-letters back into the queue.
One time to live per wait queue means none blocks another at its head; a message that comes
back still early goes on to the next shorter wait queue, so it arrives a few milliseconds
after its time at most.

The logic is written once, as coroutines of a link: one robust connection on one event loop,
which reconnects by itself. The asyncio methods use a link on the caller's loop; the sync ones
use one link on busway's helper loop, and consume without a round trip to it while fetched
messages are at hand. Inside a batch (a relay forwarding an outbox), a send does not wait for
its confirm: the batch waits for all of them before it acknowledges, and fails, so that it is
redone, if one was refused.

The modules, under the same names for the same concepts in every broker package:

- ``channel``: the channel, ``AmqpChannel``.
- ``link``: the connection edge: one robust connection on one event loop, and the setting up
  and publishing over it.
- ``wire``: a message on the wire: headers as typed AMQP properties and field tables.
- ``deferred``: a batch's sends, deferred until before its acknowledgement: publishes whose
  confirms are in flight meanwhile.
- ``consuming``: how the channel consumes: the link's consumer, whose fetched messages are
  handed out one at a time, acknowledged or given back.
- ``topology``: the queues ``setup`` declares, one or a partition per ordering key's hash,
  and the queue and priority of each message.
- ``shares``: which partitions a link takes, by an exclusive owner queue each, and how many
  it should, by the consumers of the channel's members queue.
- ``partitioned``: the link of a partitioned channel, consuming its share and following it
  as workers come and go.

``busway.channels.amqp`` is internal: the one public import path is ``busway.amqp.AmqpChannel``.
"""

from busway.errors import extra_required

with extra_required("the RabbitMQ channel (busway.amqp)", "rabbitmq"):
    import aio_pika  # noqa: F401 - before the modules below, which take aio-pika for granted

from busway.channels.amqp.channel import AmqpChannel

__all__ = ["AmqpChannel"]
