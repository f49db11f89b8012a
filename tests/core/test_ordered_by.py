"""``@ordered_by``: a field name is checked where the class declares its fields, and a payload
without the field is refused at the send with one sentence."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from pydantic import BaseModel

from busway.ordering import declared_key, ordered_by


def test_a_field_the_dataclass_does_not_declare_is_refused_at_the_decoration():
    with pytest.raises(TypeError, match=r"it has no field 'orderid'; name one of its fields "):

        @ordered_by("orderid")
        @dataclass
        class OrderPlaced:
            order_id: int
            shop: str


def test_a_field_the_pydantic_model_does_not_declare_is_refused_at_the_decoration():
    class Paid(BaseModel):
        order_id: int

    with pytest.raises(TypeError, match=r"\(order_id\)"):
        ordered_by("order")(Paid)


def test_a_declared_field_gives_the_key():
    @ordered_by("order_id")
    @dataclass
    class Shipped:
        order_id: int

    key_of = declared_key(Shipped)
    assert key_of is not None
    assert key_of(Shipped(7)) == 7


def test_a_payload_without_the_field_is_refused_with_one_sentence():
    class Loose:  # declares no fields: checked only when a payload comes
        pass

    key_of = declared_key(ordered_by("order_id")(Loose))
    assert key_of is not None
    with pytest.raises(TypeError, match=r"this payload has no field 'order_id'"):
        key_of(Loose())
