from django.urls import path

from shop.views import place_order

urlpatterns = [path("orders/<str:number>", place_order)]
