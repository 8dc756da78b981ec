"""mllm-arb: dissect how multimodal LLMs arbitrate between image and text context."""

import os

# Before torch loads: OpenMP threads that spin while waiting slow small CPU models down ~15x when the
# cores are shared with anything else (measured: 9.8 s vs 0.6 s per organism batch under load).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
