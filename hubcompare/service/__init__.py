"""`hubcompare serve`: pages and a JSON API over the registry and the result store, with a job queue."""
