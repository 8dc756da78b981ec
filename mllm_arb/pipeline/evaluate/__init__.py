"""`evaluate`: behaviour, the modality-following ratio of every condition."""
