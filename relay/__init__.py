"""relay: a high-concurrency OpenAI-compatible LLM API relay."""

__version__ = "0.1.0"
