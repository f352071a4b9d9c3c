"""Shorter audio windows on real weights of the same encoder family: Whisper tiny.en (the embedded CTranslate2 model)
with each clip padded to a multiple of a 30, 15, 10 or 5 s window, every window encoded apart with its positions
reset, and the decoder reading their encodings one after another: what ``voxtral.audio_window_s`` does to Voxtral's
Whisper-large-v3-derived encoder, whose own weights cannot be loaded here.

It is evidence by analogy, not Voxtral's accuracy: a smaller model of the family, English clips of at most 30 s (one
30 s window each, Whisper's own setting, is the reference), greedy decoding without timestamps. Each window's WER is
given as decoded and with the product's loop guard applied, and with the guard over the clips of at most 10 s alone
(what a realtime preview usually is: ``voxtral.preview_window_s: 10`` encodes it as one 10 s window).

    python -m benchmarks.bench_window_whisper --windows 30,15,10,5 --out benchmarks/results/window_accuracy_whisper_tiny_cpu.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from benchmarks.bench_window_accuracy import error_rates, window_record
from benchmarks.common import SHARED_AUDIO, command_line, machine_info, read_manifest, write_result
from serve_app.core.repetition import cut_repetition
from serve_app.core.types import SAMPLE_RATE

HOP = 160  # Whisper's mel hop: 100 frames a second
SHORT_S = 10


def windowed_encoding(model, extractor, audio: np.ndarray, window_s: int):
    """The clip padded with silence to whole windows, its log-mel computed once (one normalisation over the clip, as
    Voxtral's), each window's frames encoded apart, the encodings joined in time."""
    import ctranslate2

    window = window_s * SAMPLE_RATE
    padded = np.zeros(-(-len(audio) // window) * window, dtype=np.float32)
    padded[: len(audio)] = audio
    mel = extractor(padded, padding=0)[:, : len(padded) // HOP]
    frames = window_s * SAMPLE_RATE // HOP
    parts = [
        np.array(model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(mel[None, :, i : i + frames]))))
        for i in range(0, mel.shape[1], frames)
    ]
    return ctranslate2.StorageView.from_array(np.ascontiguousarray(np.concatenate(parts, axis=1)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--windows", default="30,15,10,5", help="seconds; the first is the reference")
    p.add_argument("--audio-dir", default=str(SHARED_AUDIO))
    p.add_argument("--out", default=None)
    a = p.parse_args()

    import ctranslate2
    import tokenizers
    from faster_whisper.feature_extractor import FeatureExtractor
    from faster_whisper.tokenizer import Tokenizer

    from serve_app.audio.decode import load_file
    from serve_app.config import embedded_whisper_model

    path = embedded_whisper_model()
    model = ctranslate2.models.Whisper(path, device="cpu", compute_type="int8")
    extractor = FeatureExtractor(feature_size=model.n_mels)
    tokenizer = Tokenizer(tokenizers.Tokenizer.from_file(str(Path(path) / "tokenizer.json")), multilingual=False)
    prompt = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
    rows = [r for r in read_manifest(Path(a.audio_dir)) if r["language"] == "en" and r["duration_s"] <= 30]
    clips = [load_file(str(Path(a.audio_dir) / row["file"])) for row in rows]
    result: dict = {"command": command_line(), "machine": machine_info(), "model": "whisper tiny.en (CTranslate2, int8)",
                    "clips": len(rows), "audio_s": round(sum(len(c) for c in clips) / SAMPLE_RATE, 1), "windows": []}  # fmt: skip
    reference: list[str] | None = None
    for window_s in [int(w) for w in a.windows.split(",")]:
        started, texts, tokens = time.perf_counter(), [], 0
        for clip in clips:
            encoded = windowed_encoding(model, extractor, clip, window_s)
            ids = model.generate(encoded, [prompt], beam_size=1, max_length=224)[0].sequences_ids[0]
            texts.append(tokenizer.decode(ids).strip())
            tokens += len(ids)
        reference = reference or texts
        cut = [cut_repetition(t) for t in texts]  # what the product returns: its transcriber cuts a loop at the end
        short = [i for i, row in enumerate(rows) if row["duration_s"] <= SHORT_S]
        measures = {
            "wer_percent": error_rates(rows, texts)["by_language"]["en"],
            "wer_percent_loops_cut": error_rates(rows, cut)["by_language"]["en"],
            f"wer_percent_loops_cut_clips_up_to_{SHORT_S}s": error_rates([rows[i] for i in short], [cut[i] for i in short])["by_language"]["en"],
            "generated_tokens": tokens,
        }
        result["windows"].append(window_record(window_s, measures, rows, texts, reference, started))
        write_result(a.out, result, echo=False)  # partial
    write_result(a.out, result)


if __name__ == "__main__":
    main()
