from django.urls import path

from djtest.views import place_order

urlpatterns = [path("orders/<str:alias>/<str:number>", place_order)]
