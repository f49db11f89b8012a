"""RabbitMQ for busway: ``AmqpChannel``. Needs the extra: ``pip install 'busway[rabbitmq]'``."""

from busway.channels.amqp import AmqpChannel

__all__ = ["AmqpChannel"]
