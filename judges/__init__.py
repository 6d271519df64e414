"""Judges: rules, an LLM judge, a multimodal judge, the hybrid reward, and a rubric judge for benchmarks."""
