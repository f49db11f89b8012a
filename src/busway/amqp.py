"""RabbitMQ: ``AmqpChannel``, from its one public import path.

Needs the extra: ``pip install 'busway[rabbitmq]'``. The channel lives in
``busway.channels.amqp``, which is internal.
"""

from busway.channels.amqp import AmqpChannel

__all__ = ["AmqpChannel"]
