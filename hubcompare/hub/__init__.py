"""The Hugging Face Hub: ``names`` (name rules, reference parsing; a leaf), ``client`` (push/pull through
the real client), ``registry``, ``references`` (the one resolver), and a standard-library
Hub-protocol server for offline machines (``store``, ``routes``, ``handler``, ``server``)."""
