from django.db import models


class Order(models.Model):
    """A business row written beside an outbox message."""

    number = models.CharField(max_length=50, unique=True)

    class Meta:
        app_label = "djtest"
        db_table = "busway_dj_order"


class Delivered(models.Model):
    """Written by the handler of an OrderPlaced event, in its worker's transaction."""

    number = models.CharField(max_length=50, unique=True)

    class Meta:
        app_label = "djtest"
        db_table = "busway_dj_delivered"


class Effect(models.Model):
    """One per Record command handled: its key is unique, so a second effect cannot be."""

    key = models.IntegerField(unique=True)
    worker = models.CharField(max_length=50)

    class Meta:
        app_label = "djtest"
        db_table = "busway_dj_effect"


class Counter(models.Model):
    """How many Record commands each worker handled, counted in the handler's transaction."""

    worker = models.CharField(max_length=50, primary_key=True)
    n = models.IntegerField(default=0)

    class Meta:
        app_label = "djtest"
        db_table = "busway_dj_counter"
