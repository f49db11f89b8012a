from django.http import HttpRequest, HttpResponse

from djtest.messaging import OrderPlaced, OutboxBus, messaging_for
from djtest.models import Order


def place_order(request: HttpRequest, alias: str, number: str) -> HttpResponse:
    """Write an order and publish OrderPlaced; ``?fail=1`` raises after both."""
    Order.objects.using(alias).create(number=number)
    messaging_for(alias).gateway(OutboxBus).publish(OrderPlaced(number))
    if request.GET.get("fail"):
        raise RuntimeError("the view failed after writing")
    return HttpResponse("placed")
