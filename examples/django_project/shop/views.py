from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_POST

from shop.messaging import OrderWasPlaced, OutboxEventBus, messaging
from shop.models import Order

events = messaging.gateway(OutboxEventBus)


@require_POST
def place_order(request: HttpRequest, number: str) -> HttpResponse:
    # ATOMIC_REQUESTS wraps the view in transaction.atomic(): the order and its event commit
    # together, or, if the view raises, neither does.
    Order.objects.create(number=number, product=request.POST.get("product", "book"))
    events.publish(OrderWasPlaced(number))
    if request.POST.get("fail"):
        raise RuntimeError("the view failed: the order and its event are rolled back")
    return HttpResponse(f"order {number} placed\n", status=201)
