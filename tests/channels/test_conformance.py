"""Every channel busway ships passes the same scenarios."""

from __future__ import annotations

import pytest

from busway import InMemoryChannel, SqlChannel
from busway.testing import ChannelContract
from busway.testing.conformance import ChannelFactory


class TestInMemoryChannel(ChannelContract):
    @pytest.fixture
    def channel_factory(self) -> ChannelFactory:
        return InMemoryChannel


class TestSqlChannel(ChannelContract):
    """On each database of the ``database_url`` fixture in tests/conftest.py."""

    @pytest.fixture
    def database_url(self, database_url: str) -> str:  # the parametrized one
        return database_url

    @pytest.fixture
    def channel_factory(self) -> ChannelFactory:
        return SqlChannel


class TestSqlChannelInLeaseMode(ChannelContract):
    @pytest.fixture
    def channel_factory(self) -> ChannelFactory:
        return lambda name: SqlChannel(name, mode="lease", visibility_timeout=1.0)
