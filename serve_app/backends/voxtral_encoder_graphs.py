"""CUDA graphs for Voxtral's audio encoder inside vLLM, loaded as a vLLM plugin (``vllm.general_plugins``).

vLLM runs Voxtral's Whisper encoder eagerly: about 400 kernel launches per call, each dispatched through Python,
which on an H100 costs the engine core more CPU time than the call's GPU time (benchmarks/NOTES-gpu.md). Voxtral pads
every clip to 30 s windows of one shape (128 mel bins x 3000 frames), so a graph per batch size of 1..N windows
covers all traffic; larger batches run as several replays.

vLLM spawns its engine core in a fresh process, so the class is installed there by the plugin entry point in
pyproject.toml. It changes nothing unless the engine's ``additional_config`` asks for it (``VoxtralBackend`` does,
from ``voxtral.encoder_cuda_graphs``), and it falls back to the eager encoder for anything it does not recognise.
"""

from __future__ import annotations

import logging
import time

CONFIG_KEY = "stt_encoder_cuda_graphs"  # additional_config key: the largest batch of windows captured (0: off)
MODEL_CLASS = "VoxtralForConditionalGeneration"

log = logging.getLogger("vllm.stt_encoder_graphs")


def register() -> None:
    """The plugin entry point: serve Voxtral with the class below (vLLM's own, plus the optional graphs)."""
    from vllm import ModelRegistry

    ModelRegistry.register_model(MODEL_CLASS, f"{__name__}:GraphedVoxtral")


def _graphed_voxtral_class():
    from vllm.model_executor.models.voxtral import VoxtralForConditionalGeneration

    class GraphedVoxtral(VoxtralForConditionalGeneration):
        def __init__(self, *, vllm_config, prefix: str = ""):
            super().__init__(vllm_config=vllm_config, prefix=prefix)
            max_batch = int((vllm_config.additional_config or {}).get(CONFIG_KEY, 0))
            if max_batch > 0:
                encoder = self.whisper_encoder.whisper_encoder
                # an instance attribute, so the parameters keep their names for the weight loader
                encoder.forward = EncoderGraphs(encoder.forward, max_batch)

    GraphedVoxtral.__qualname__ = "GraphedVoxtral"
    return GraphedVoxtral


def __getattr__(name: str):
    if name == "GraphedVoxtral":  # built on first use, so importing this module does not import vLLM
        cls = _graphed_voxtral_class()
        globals()[name] = cls
        return cls
    raise AttributeError(name)


class EncoderGraphs:
    """Calls ``forward([features])`` through CUDA graphs for batches of up to ``max_batch`` windows.

    The graphs are captured on the first CUDA call (vLLM's start-up profiling run), largest first into one memory
    pool, and each is checked against the eager encoder once; any failure leaves the eager encoder in place.
    """

    def __init__(self, forward, max_batch: int):
        self.forward = forward
        self.max_batch = max_batch
        self.graphs: dict[int, tuple] = {}  # batch size -> (graph, static input, static output)
        self.window_shape: tuple | None = None  # set by the capture: (mel bins, frames)
        self.dtype = None
        self.disabled = False

    def __call__(self, input_features):
        import torch

        x = input_features[0] if isinstance(input_features, list) and len(input_features) == 1 else None
        if x is None or not x.is_cuda or x.dim() != 3 or torch.cuda.is_current_stream_capturing():
            return self.forward(input_features)
        if self.window_shape is None:
            self._capture(x)
        if self.disabled or tuple(x.shape[1:]) != self.window_shape or x.dtype != self.dtype:
            return self.forward(input_features)
        parts = [self._replay(x[i : i + self.max_batch]) for i in range(0, len(x), self.max_batch)]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _replay(self, part):
        graph, static_in, static_out = self.graphs[len(part)]
        static_in.copy_(part)
        graph.replay()
        return static_out.clone()  # the next replay overwrites static_out

    def _capture(self, example) -> None:
        import torch

        started = time.perf_counter()
        before = torch.cuda.memory_reserved()
        self.window_shape, self.dtype = tuple(example.shape[1:]), example.dtype
        pool = torch.cuda.graph_pool_handle()
        worst = 0.0
        try:
            for n in range(self.max_batch, 0, -1):  # largest first: the smaller graphs reuse its memory
                static_in = torch.randn((n, *self.window_shape), dtype=self.dtype, device=example.device)
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    eager = self.forward([static_in])  # warm-up (library workspaces) and the reference output
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
                    static_out = self.forward([static_in])
                graph.replay()
                worst = max(worst, (static_out.float() - eager.float()).abs().max().item() / (eager.float().abs().max().item() or 1))
                self.graphs[n] = (graph, static_in, static_out)
            if worst > 1e-2:
                raise ValueError(f"they differ from the eager encoder by {worst:.3g}")
        except Exception as e:  # an attention backend that cannot be captured, out of memory, a mismatch, ...
            log.warning("audio encoder CUDA graphs disabled, the encoder runs eagerly: %s", e)
            self.graphs.clear()
            self.disabled = True
            return
        seconds, mib = time.perf_counter() - started, (torch.cuda.memory_reserved() - before) / 2**20
        replays = ", ".join(f"{n}: {self._replay_ms(n):.2f}" for n in sorted(self.graphs))
        log.warning(  # warning: vLLM's engine core shows its own info logs only
            "audio encoder CUDA graphs for 1-%d windows of %s captured in %.2f s, %.0f MiB; relative |graph - eager| %.2g;"
            " GPU ms per replay by windows {%s}",
            self.max_batch, self.window_shape, seconds, mib, worst, replays,
        )  # fmt: skip

    def _replay_ms(self, n: int, repeats: int = 5) -> float:
        """The GPU time of one replay of the graph for ``n`` windows: what the encoder costs per step, logged at start."""
        import torch

        graph = self.graphs[n][0]
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        graph.replay()
        start.record()
        for _ in range(repeats):
            graph.replay()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / repeats
