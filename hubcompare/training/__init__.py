"""Training a recipe into a checkpoint folder: ``recipes``, the resumable ``loop``, ``evaluate``."""
