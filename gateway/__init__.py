"""Sophia Gateway: an OpenAI-compatible LLM reverse proxy."""

__version__ = "0.1.0"
