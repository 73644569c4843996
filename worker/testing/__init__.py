"""Scaffolding for tests, the demo and benchmarks: stand-in checkpoints, the fast stand-in scorer (with its
fault injection), synthetic media and embedded servers. Never imported by the worker's runtime path."""
