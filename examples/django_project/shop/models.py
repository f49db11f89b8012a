from django.db import models


class Order(models.Model):
    number = models.CharField(max_length=50, unique=True)
    product = models.CharField(max_length=200)


class Confirmation(models.Model):
    """Written by the worker, in the transaction that takes its event off the outbox."""

    number = models.CharField(max_length=50, unique=True)
