"""`build-data`: a conflict dataset from the `data` config group, optionally filtered per model."""
