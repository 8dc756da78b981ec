"""`mllm-arb plan`: a command's passes, tokens and memory, counted before it runs."""
