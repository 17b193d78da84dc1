"""Small helpers shared by the tools."""

import functools

__all__ = ["has_compiled_ops"]


@functools.lru_cache(maxsize=None)
def has_compiled_ops() -> bool:
    """Whether detectron2 was built with its compiled ops (False for the pure-Python install,
    whose ``detectron2._C`` is a placeholder)."""
    try:
        from detectron2 import _C
    except ImportError:
        return False
    return not getattr(_C, "ATSS_D2_PLACEHOLDER", False)
