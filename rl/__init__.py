"""GRPO training of the llmi policy (TRL) on trajectories produced by running the llmi graph."""
