"""Benchmark of the worker against its ceiling and a naive loop (issue #7): `make bench`."""
