"""Helpers for tests and benchmarks: real PostgreSQL, Redis and S3 servers (services.py)."""
