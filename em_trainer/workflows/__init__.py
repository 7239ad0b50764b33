"""Workflows that chain the verbs: EM then GRPO, and multi-seed sweeps. The layer just below the CLI."""
