"""Benchmarks for llmi: adapters that turn a benchmark's rows into graph requests and score the documents."""
