"""Voxtral's audio encoder inside vLLM, loaded as a vLLM plugin (``vllm.general_plugins``): CUDA graphs for it, and
windows shorter than 30 s.

vLLM runs Voxtral's Whisper encoder eagerly: about 400 kernel launches per call, each dispatched through Python,
which on an H100 costs the engine core more CPU time than the call's GPU time (benchmarks/NOTES-gpu.md). Voxtral pads
every clip to 30 s windows of one shape (128 mel bins x 3000 frames), so a graph per batch size of 1..N windows
covers all traffic; larger batches run as several replays. With a shorter ``voxtral.audio_window_s`` a clip is padded
to multiples of that window instead, so a batch mixes window lengths: each length is encoded apart, from graphs of
its own.

vLLM spawns its engine core in a fresh process, so the class is installed there by the plugin entry point in
pyproject.toml. It changes nothing unless the engine's ``additional_config`` asks for it (``VoxtralBackend`` does,
from ``voxtral.encoder_cuda_graphs`` and ``voxtral.audio_window_s``), and the graphs fall back to the eager encoder
for anything they do not recognise.
"""

from __future__ import annotations

import logging
import time

CONFIG_KEY = "stt_encoder_cuda_graphs"  # additional_config key: the largest batch of windows captured (0: off)
WINDOW_KEY = "stt_audio_window_s"  # additional_config key: the audio window in seconds (absent: vLLM's 30 s chunks)
MODEL_CLASS = "VoxtralForConditionalGeneration"

log = logging.getLogger("vllm.stt_encoder_graphs")


def register() -> None:
    """The plugin entry point: serve Voxtral with the class below (vLLM's own, plus the optional graphs and windows)."""
    from vllm import ModelRegistry

    ModelRegistry.register_model(MODEL_CLASS, f"{__name__}:GraphedVoxtral")


def _graphed_voxtral_class():
    from vllm.model_executor.models.voxtral import VoxtralForConditionalGeneration

    class GraphedVoxtral(VoxtralForConditionalGeneration):
        def __init__(self, *, vllm_config, prefix: str = ""):
            super().__init__(vllm_config=vllm_config, prefix=prefix)
            extra = vllm_config.additional_config or {}
            model = self.whisper_encoder  # vLLM's VoxtralEncoderModel: mel spectrogram, 30 s chunks, encoder
            frames_per_s = model.config.sampling_rate // model.config.hop_length
            lengths = window_lengths(model.chunk_size, frames_per_s, extra.get(WINDOW_KEY))
            # instance attributes, so the parameters keep their names for the weight loader
            if len(lengths) > 1:
                model.forward = WindowedEncoder(model)
            max_batch = int(extra.get(CONFIG_KEY, 0))
            if max_batch > 0:
                encoder = model.whisper_encoder
                encoder.forward = EncoderGraphs(encoder.forward, max_batch, lengths)

    GraphedVoxtral.__qualname__ = "GraphedVoxtral"
    return GraphedVoxtral


def __getattr__(name: str):
    if name == "GraphedVoxtral":  # built on first use, so importing this module does not import vLLM
        cls = _graphed_voxtral_class()
        globals()[name] = cls
        return cls
    raise AttributeError(name)


def window_lengths(chunk_frames: int, frames_per_s: int, window_s: float | None) -> tuple[int, ...]:
    """The mel lengths a window can have: vLLM's chunk (30 s), and with a shorter window each multiple of it below."""
    if not window_s:
        return (chunk_frames,)
    step = round(window_s * frames_per_s)
    if step <= 0 or chunk_frames % step:
        raise ValueError(f"An audio window of {window_s} s does not divide the encoder's {chunk_frames} frames.")
    return tuple(range(chunk_frames, 0, -step))  # largest first


class WindowedEncoder:
    """``VoxtralEncoderModel.forward`` for windows of several lengths.

    vLLM's forward stacks the 30 s chunks of every clip in a batch into one tensor, which needs them all of one
    length: true while each clip is padded to whole 30 s windows. A shorter window lets a batch mix lengths (a 3 s
    clip's 10 s window beside a 25 s clip's 30 s one, a 35 s clip's 30 s chunk and its 10 s rest), so each length is
    encoded apart and the outputs go back in the clips' order.
    """

    def __init__(self, model):
        self.model = model

    def __call__(self, input_features):
        import torch

        model = self.model
        windows, per_clip = [], []
        for audio in input_features if isinstance(input_features, list) else [input_features]:
            parts = model.compute_whisper_melspec(audio).to(model.dtype).split(model.chunk_size, dim=-1)
            windows += parts
            per_clip.append(len(parts))
        encoded: list = [None] * len(windows)
        for length in {w.shape[-1] for w in windows}:
            which = [i for i, w in enumerate(windows) if w.shape[-1] == length]
            for i, out in zip(which, model.whisper_encoder([torch.stack([windows[i] for i in which])])):
                encoded[i] = out
        clips, start = [], 0
        for n in per_clip:
            clips.append(torch.cat(encoded[start : start + n]))
            start += n
        return clips


class EncoderGraphs:
    """Calls ``forward([features])`` through CUDA graphs for batches of up to ``max_batch`` windows of each mel length
    in ``lengths`` (3000 frames: a 30 s window).

    The graphs are captured on the first CUDA call (vLLM's start-up profiling run), largest first into one memory
    pool, and each is checked against the eager encoder once; any failure leaves the eager encoder in place.
    """

    def __init__(self, forward, max_batch: int, lengths: tuple[int, ...] = (3000,)):
        self.forward = forward
        self.max_batch = max_batch
        self.lengths = tuple(sorted(lengths, reverse=True))
        self.graphs: dict[tuple[int, int], tuple] = {}  # (frames, windows) -> (graph, static input, static output)
        self.mel_bins: int | None = None  # set by the capture, with the dtype
        self.dtype = None
        self.disabled = False

    def __call__(self, input_features):
        import torch

        x = input_features[0] if isinstance(input_features, list) and len(input_features) == 1 else None
        if x is None or not x.is_cuda or x.dim() != 3 or torch.cuda.is_current_stream_capturing():
            return self.forward(input_features)
        if self.mel_bins is None:
            self._capture(x)
        if self.disabled or (x.shape[2], 1) not in self.graphs or x.shape[1] != self.mel_bins or x.dtype != self.dtype:
            return self.forward(input_features)
        parts = [self._replay(x[i : i + self.max_batch]) for i in range(0, len(x), self.max_batch)]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _replay(self, part):
        graph, static_in, static_out = self.graphs[(part.shape[2], len(part))]
        static_in.copy_(part)
        graph.replay()
        return static_out.clone()  # the next replay overwrites static_out

    def _capture(self, example) -> None:
        import torch

        started = time.perf_counter()
        before = torch.cuda.memory_reserved()
        self.mel_bins, self.dtype = example.shape[1], example.dtype
        pool = torch.cuda.graph_pool_handle()
        worst = 0.0
        try:
            for frames in self.lengths:  # largest first: the smaller graphs reuse its memory
                for n in range(self.max_batch, 0, -1):
                    static_in = torch.randn((n, self.mel_bins, frames), dtype=self.dtype, device=example.device)
                    side = torch.cuda.Stream()
                    side.wait_stream(torch.cuda.current_stream())
                    with torch.cuda.stream(side):
                        eager = self.forward([static_in])  # warm-up (library workspaces) and the reference output
                    torch.cuda.current_stream().wait_stream(side)
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
                        static_out = self.forward([static_in])
                    graph.replay()
                    difference = (static_out.float() - eager.float()).abs().max().item()
                    worst = max(worst, difference / (eager.float().abs().max().item() or 1))
                    self.graphs[(frames, n)] = (graph, static_in, static_out)
            if worst > 1e-2:
                raise ValueError(f"they differ from the eager encoder by {worst:.3g}")
        except Exception as e:  # an attention backend that cannot be captured, out of memory, a mismatch, ...
            log.warning("audio encoder CUDA graphs disabled, the encoder runs eagerly: %s", e)
            self.graphs.clear()
            self.disabled = True
            return
        seconds, mib = time.perf_counter() - started, (torch.cuda.memory_reserved() - before) / 2**20
        sizes = range(1, self.max_batch + 1)
        replays = "; ".join(f"{f} frames {({n: round(self._replay_ms(f, n), 2) for n in sizes})}" for f in self.lengths)
        log.warning(  # warning: vLLM's engine core shows its own info logs only
            "audio encoder CUDA graphs for 1-%d windows of %d mel bins x %s frames captured in %.2f s, %.0f MiB;"
            " relative |graph - eager| %.2g; GPU ms per replay by windows: %s",
            self.max_batch, self.mel_bins, "/".join(map(str, self.lengths)), seconds, mib, worst, replays,
        )  # fmt: skip

    def _replay_ms(self, frames: int, n: int, repeats: int = 5) -> float:
        """The GPU time of one replay of the graph for ``n`` windows: what the encoder costs per step, logged at start."""
        import torch

        graph = self.graphs[(frames, n)][0]
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        graph.replay()
        start.record()
        for _ in range(repeats):
            graph.replay()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / repeats
