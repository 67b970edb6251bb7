"""Benchmark adapters: one module per benchmark (loader for the release files, prompt, scorer)."""

from .registry import BENCHMARKS, get_benchmark, list_benchmarks

__all__ = ["BENCHMARKS", "get_benchmark", "list_benchmarks"]
