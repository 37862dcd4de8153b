"""Asynchronous media (and later AI) jobs: queued in the database, run in worker processes."""
