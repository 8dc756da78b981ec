"""`python -m mllm_arb.cli ARGS` (how torchrun launches the command line)."""

from .app import main

main()
