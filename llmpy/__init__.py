"""llm.py: LLM training and inference in simple, explicit Python (llm.c and llama2.c over NumPy)."""

__version__ = "0.1.0"
