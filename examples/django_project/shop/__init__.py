"""A Django shop whose OrderWasPlaced events go through busway's outbox."""
