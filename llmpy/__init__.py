"""llm.py: LLM training and inference in simple, explicit Python (llm.c and llama2.c over NumPy)."""

__version__ = "0.1.0"


def _drop_stale_kernels():
    from llmpy.kernel_cache import drop_stale

    drop_stale(__path__[0])


_drop_stale_kernels()
