"""mllm-arb: dissect how multimodal LLMs arbitrate between image and text context."""

__version__ = "0.1.0"
