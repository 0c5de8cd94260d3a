"""The result store: every comparison under a content key (models, dataset, settings), in SQLite + files."""
