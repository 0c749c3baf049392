"""CUDA graphs for the small steps (applied from outside, reversible).

Steps with few tokens are bound by kernel launches (about 36 layers x a dozen kernels), not by arithmetic. For a
step shape that repeats (every scale runs 1-3 repetitions; every generation runs the same schedule) we capture
the whole block stack once into a CUDA graph and replay it. A graph is keyed by everything that is baked into it:
batch rows, token count, the cache's prefix lengths per layer and the cache's identity; the cache's buffers are
static and reused across generations (``STARTransformer.new_cache``), so graphs replay across generations too.
"""
from __future__ import annotations

import torch


class GraphedBlocks:
    def __init__(self, model, max_tokens: int = 1024):
        self.model = model
        self.max_tokens = max_tokens
        self.eager = model.forward_blocks           # the bound method we wrap
        self.graphs: dict = {}
        self.pool = None
        self.captures = 0
        self.replays = 0

    def __call__(self, x_BNC, cos, sin, cache, layer_outputs=None, layers=None):
        B, N, _ = x_BNC.shape
        if (layer_outputs is not None or layers is not None or N > self.max_tokens or x_BNC.device.type != "cuda"
                or torch.is_grad_enabled()):
            return self.eager(x_BNC, cos, sin, cache, layer_outputs=layer_outputs, layers=layers)
        key = (B, N, cache.text_len, tuple(cache.ref_lens), id(cache), x_BNC.dtype, cos.dtype)
        g = self.graphs.get(key)
        if g is None:
            g = self._capture(key, x_BNC, cos, sin, cache)
            if g is None:
                return self.eager(x_BNC, cos, sin, cache)
        graph, sx, scos, ssin, out = g
        sx.copy_(x_BNC)
        scos.copy_(cos)
        ssin.copy_(sin)
        graph.replay()
        # the replay wrote this step's K/V into the cache; record the lengths as the eager path would
        for i in range(len(cache.step_lens)):
            cache.step_lens[i] = N
        self.replays += 1
        return out.clone()

    def _capture(self, key, x, cos, sin, cache):
        sx, scos, ssin = x.clone(), cos.clone(), sin.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self.eager(sx, scos, ssin, cache)        # warm-up on a side stream (autotuning, lazy init)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        try:
            with torch.cuda.graph(graph, pool=self.pool):
                out = self.eager(sx, scos, ssin, cache)
        except Exception:
            return None
        self.graphs[key] = (graph, sx, scos, ssin, out)
        self.captures += 1
        return self.graphs[key]


def enable_cuda_graphs(model, max_tokens: int = 1024) -> GraphedBlocks:
    """Replay small steps from CUDA graphs. Undo with ``disable_cuda_graphs(model)``."""
    disable_cuda_graphs(model)
    runner = GraphedBlocks(model, max_tokens)
    model.forward_blocks = runner
    return runner


def disable_cuda_graphs(model) -> None:
    if isinstance(model.__dict__.get("forward_blocks"), GraphedBlocks):
        del model.__dict__["forward_blocks"]
