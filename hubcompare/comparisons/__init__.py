"""Comparison requests: validated, keyed, looked up in the result store or computed; the CLI and the service both run them."""
