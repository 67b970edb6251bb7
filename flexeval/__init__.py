"""flexeval: evaluation harness for FlexAttention high-resolution LLaVA models."""

__version__ = "0.1.0"
