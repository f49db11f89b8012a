"""SQL support: ``SqlChannel`` (the outbox) and transactions, through SQLAlchemy 2."""

from busway.sql.channel import SqlChannel
from busway.sql.database import Database
from busway.sql.dead_letters import SqlDeadLetterStore
from busway.sql.interceptor import TransactionInterceptor
from busway.sql.transactions import current_transaction

__all__ = [
    "Database",
    "SqlChannel",
    "SqlDeadLetterStore",
    "TransactionInterceptor",
    "current_transaction",
]
