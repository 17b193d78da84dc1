"""
CUDA graphs for inference: the network part of a forward pass (backbone and head) recorded once
per input shape and replayed, so that a batch costs a few graph launches instead of hundreds of
kernel launches from Python. At batch 1 on a fast GPU, R-50-FPN with a dense head is bound by
those launches, not by arithmetic.

The decoding, top-k and NMS after the head produce data-dependent shapes and stay eager.
"""

import logging
from collections import OrderedDict
from typing import Callable, Iterable, Optional, Tuple

import torch
from torch import Tensor
from torch.utils._pytree import tree_flatten, tree_unflatten

__all__ = ["CUDAGraphCache"]

logger = logging.getLogger(__name__)


def _autocast_enabled() -> bool:
    try:
        return torch.is_autocast_enabled("cuda")
    except TypeError:  # torch before 2.4 takes no device type (and means CUDA)
        return torch.is_autocast_enabled()


class _Graph:
    """One captured graph: its static input, its static outputs and the graph to replay."""

    def __init__(self, fn: Callable[[Tensor], object], x: Tensor, warmup_iters: int):
        self.static_input = x.clone()  # same shape, dtype and strides (preserve_format)
        # Warm-up on a side stream, as CUDA graph capture wants (cuDNN/cuBLAS pick their
        # algorithms and workspaces before the capture, not inside it).
        stream = torch.cuda.Stream(device=x.device)
        stream.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(stream):
            for _ in range(warmup_iters):
                fn(self.static_input)
        torch.cuda.current_stream(x.device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            outputs = fn(self.static_input)
        self.static_outputs, self.spec = tree_flatten(outputs)
        if not all(isinstance(t, Tensor) for t in self.static_outputs):
            raise TypeError("a function replayed from a CUDA graph must return only tensors")

    def replay(self, x: Tensor):
        self.static_input.copy_(x)
        self.graph.replay()
        return tree_unflatten(list(self.static_outputs), self.spec)


class CUDAGraphCache:
    """
    Runs ``fn(x)`` (``x`` one tensor, the result a nested tuple/list/dict of tensors) from a CUDA
    graph captured the first time ``x``'s shape, strides, dtype and device are seen, keeping the
    graphs of the ``max_graphs`` most recently used input layouts.

    Eager ``fn(x)`` instead where a graph cannot stand in for it: ``x`` not on CUDA, autograd
    recording (``torch.is_grad_enabled()``), CUDA autocast on, tracing or scripting, or a graph
    capture already under way.

    The outputs of a replay are the graph's own tensors: the next replay of the same shape
    overwrites them, so use or copy them before calling again (a detector's post-processing
    makes new tensors from them). A graph reads the parameters at the addresses they had when it
    was captured; ``params`` (passed at every call) are the tensors whose addresses must not
    change, and when one has (``model.to(...)``, ``model.half()``, a parameter replaced) every
    graph is dropped and captured again. In-place updates (an optimizer step, a checkpoint
    loaded with ``load_state_dict``) keep the addresses, and the graphs see the new values.

    Each graph keeps its own memory pool (about the activations of one forward pass at that
    shape); :meth:`clear` frees them all.
    """

    def __init__(self, max_graphs: int = 8, warmup_iters: int = 2):
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be >= 1, got {max_graphs}")
        self.max_graphs = max_graphs
        self.warmup_iters = warmup_iters
        self._graphs: "OrderedDict[Tuple, _Graph]" = OrderedDict()
        self._fingerprint: Optional[Tuple[int, ...]] = None
        self.captures = 0  # graphs captured so far (for tests and logs)

    def __len__(self) -> int:
        return len(self._graphs)

    def clear(self) -> None:
        """Drop every graph and the memory it holds."""
        self._graphs.clear()

    def can_replay(self, x: Tensor) -> bool:
        return (
            x.is_cuda
            and not torch.is_grad_enabled()
            and not _autocast_enabled()
            and not torch.jit.is_tracing()
            and not torch.jit.is_scripting()
            and not torch.cuda.is_current_stream_capturing()
        )

    def __call__(self, fn: Callable[[Tensor], object], x: Tensor, params: Iterable[Tensor] = ()):
        if not self.can_replay(x):
            return fn(x)
        self._check_params(params)
        key = (tuple(x.shape), x.stride(), x.dtype, x.device)
        graph = self._graphs.get(key)
        if graph is None:
            graph = self._capture(fn, x)
            self.captures += 1
            self._graphs[key] = graph
            while len(self._graphs) > self.max_graphs:
                self._graphs.popitem(last=False)  # the least recently used
            logger.info(
                f"Captured a CUDA graph for input {tuple(x.shape)} ({len(self._graphs)} kept)."
            )
        else:
            self._graphs.move_to_end(key)
        return graph.replay(x)

    def _capture(self, fn: Callable[[Tensor], object], x: Tensor) -> _Graph:
        with torch.cuda.device(x.device):
            return _Graph(fn, x, self.warmup_iters)

    def _check_params(self, params: Iterable[Tensor]) -> None:
        fingerprint = tuple(t.data_ptr() for t in params)
        if fingerprint != self._fingerprint:
            if self._graphs:
                logger.info("Parameters moved since the CUDA graphs were captured; recapturing.")
            self.clear()
            self._fingerprint = fingerprint

    # Graphs and their memory pools cannot be copied or pickled: a copy starts empty.
    def __deepcopy__(self, memo):
        return CUDAGraphCache(self.max_graphs, self.warmup_iters)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_graphs"] = OrderedDict()
        state["_fingerprint"] = None
        return state
