"""The Django app of the busway.django tests: orders published through an outbox, and work
commands whose handler writes through the ORM."""
