"""Does a shorter ``voxtral.audio_window_s`` change what Voxtral hears? Each window's transcripts of an audio folder's
clips, scored against the manifest's references (WER; CER for Japanese) and against the first window's transcripts
(identical texts).

The weights here are random, so every error rate here is meaningless: this is the check to run where the real
weights load, before a shorter window is turned on. The engine is called directly, one clip at a time, with the
manifest's language.

    python -m benchmarks.bench_window_accuracy --config serve_config.yaml --windows 30,10,5 --out accuracy.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from benchmarks.common import (
    REPO,
    SHARED_AUDIO,
    app_args,
    command_line,
    english_normaliser,
    machine_info,
    offline,
    read_manifest,
    write_result,
)
from serve_app.core.types import SAMPLE_RATE

CHARACTER_LANGUAGES = {"ja", "zh", "th"}  # no spaces between words: scored by characters


async def transcribe_all(config, gpu_share: float, clips: list, languages: list[str]) -> list[dict]:
    from serve_app.backends.voxtral import VoxtralBackend
    from serve_app.core.types import TranscribeOptions

    backend = VoxtralBackend(config, gpu_share=gpu_share)
    try:
        answers = []
        for clip, language in zip(clips, languages):
            transcript = await backend.transcribe(clip, TranscribeOptions(language=language))
            answers.append({"text": transcript.text, "prompt_tokens": transcript.usage.prompt_tokens})
        return answers
    finally:
        backend.shutdown()


def error_rates(rows: list[dict], texts: list[str]) -> dict:
    """Error percent per language and overall (words, or characters for CHARACTER_LANGUAGES)."""
    import jiwer
    from whisper_normalizer.basic import BasicTextNormalizer

    english, basic, by_characters = english_normaliser(), BasicTextNormalizer(), BasicTextNormalizer(split_letters=True)
    scored: dict[str, tuple[list, list]] = {}
    for row, text in zip(rows, texts):
        language = row["language"]
        normalise = english if language == "en" else by_characters if language in CHARACTER_LANGUAGES else basic
        references, hypotheses = scored.setdefault(language, ([], []))
        references.append(normalise(row["transcript"]) or "-")
        hypotheses.append(normalise(text))
    rates = {lang: round(100 * jiwer.wer(refs, hyps), 2) for lang, (refs, hyps) in sorted(scored.items())}
    return {"by_language": rates, "mean_over_languages": round(sum(rates.values()) / len(rates), 2)}


def window_record(window_s: int, measures: dict, rows: list[dict], texts: list[str], reference: list[str], started: float) -> dict:
    """One window's entry: its measures, how many texts equal the first window's, its time and its texts by file."""
    return {
        "window_s": window_s,
        **measures,
        "identical_to_first_window": sum(t == r for t, r in zip(texts, reference)),
        "wall_s": round(time.perf_counter() - started, 1),
        "texts": {row["file"]: text for row, text in zip(rows, texts)},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(REPO / "serve_config.yaml"), help="a Serve config or a bare args YAML")
    p.add_argument("--app", default=None, help="the application in a Serve config (default: the first)")
    p.add_argument("--voxtral-json", default="{}", help="overrides of its first Voxtral model's settings")
    p.add_argument("--windows", default="30,10,5", help="seconds (30: the checkpoint's own); the first is the reference")
    p.add_argument("--audio-dir", default=str(SHARED_AUDIO))
    p.add_argument("--num-gpus", type=float, default=0.15, help="the engine's GPU share")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    offline()

    from serve_app.audio.decode import load_file
    from serve_app.config import AppConfig, VoxtralConfig

    models = AppConfig.model_validate(app_args(Path(a.config), a.app)).models
    base = next(m for m in models if m.backend == "voxtral").voxtral.model_dump() | json.loads(a.voxtral_json)
    rows = read_manifest(Path(a.audio_dir))
    clips = [load_file(str(Path(a.audio_dir) / row["file"])) for row in rows]
    languages = [row["language"] for row in rows]
    result: dict = {"command": command_line(), "machine": machine_info(), "clips": len(rows),
                    "audio_s": round(sum(len(c) for c in clips) / SAMPLE_RATE, 1), "windows": []}  # fmt: skip
    reference: list[str] | None = None
    for window in [int(w) for w in a.windows.split(",")]:
        config = VoxtralConfig.model_validate(base | {"audio_window_s": None if window == 30 else window})
        started = time.perf_counter()
        answers = asyncio.run(transcribe_all(config, a.num_gpus, clips, languages))
        texts = [answer["text"] for answer in answers]
        reference = reference or texts
        prompt_tokens = sum(answer["prompt_tokens"] for answer in answers)
        measures = {"error_percent": error_rates(rows, texts), "prompt_tokens": prompt_tokens}
        result["windows"].append(window_record(window, measures, rows, texts, reference, started))
        write_result(a.out, result, echo=False)  # partial
    write_result(a.out, result)


if __name__ == "__main__":
    main()
