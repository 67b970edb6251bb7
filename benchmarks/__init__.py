"""Benchmark adapters: one module per benchmark (loader for the release files, prompt, scorer)."""

from .registry import (
    BENCHMARKS,
    data_folders,
    get_benchmark,
    list_benchmarks,
    select_benchmarks,
    several_benchmarks,
)

__all__ = ["BENCHMARKS", "data_folders", "get_benchmark", "list_benchmarks", "select_benchmarks", "several_benchmarks"]
