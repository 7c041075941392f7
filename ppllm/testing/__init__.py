"""Test fixtures that ship with ppllm: toy programs, exact checks and their broken twins.

Shared by the test suite and the validation report (`python -m ppllm.testing.validation`),
so each broken twin is defined once. Nothing in the library imports this package.
"""
