"""Benchmarks behind `asd bench ...`: each prints one JSON document on stdout."""
