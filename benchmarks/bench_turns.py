"""What the realtime turn detector costs the model: final decodes per utterance, for each pause length.

A realtime session starts an utterance's final decode once the speaker has paused ``realtime.early_final_pause_ms``
(192 ms) and drops it if speech resumes before ``silence_duration_ms`` (500 ms) have passed
(``serve_app/realtime/turns.py``). A dropped decode is model work done for nothing: on Voxtral every decode costs a
whole 30 s encoder window and its prefill, whatever the utterance's length. A later start drops fewer decodes and
leaves the final less of a head start (``silence_duration_ms`` - pause) before ``speech_stopped``.

For each pause length, over every recording of the shared set with its own transcript (1 s of silence before, 1.5 s
after; the two-speaker stereo file left out) and over one session of the realtime benchmark (its English clips with
1.5 s gaps): utterances (``stopped``), decodes started (``pausing``) and dropped (``resumed``), decodes per utterance,
and at 256 benchmark sessions the decodes offered to the model per second. No model runs; the audio reaches the
detector as a session receives it (``bench_realtime.vad_pass``: 24 kHz PCM in 100 ms appends, decoded by the
server's stream decoder).

    .venv/bin/python -m benchmarks.bench_turns --out benchmarks/results/turns_cpu.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from benchmarks.bench_realtime import session_audio, vad_pass
from benchmarks.common import SHARED_AUDIO, command_line, machine_info, read_manifest, write_result
from serve_app.audio.decode import load_file
from serve_app.core.types import SAMPLE_RATE
from serve_app.realtime.protocol import TurnDetection


def shared_recordings(audio_dir: Path) -> list[np.ndarray]:
    """Each transcript's first recording, with 1 s of silence before and 1.5 s after."""
    seen, out = set(), []
    for row in read_manifest(audio_dir):
        if row["transcript"] in seen or "two_speakers" in row["file"]:
            continue
        seen.add(row["transcript"])
        speech = load_file(str(audio_dir / row["file"]))
        out.append(np.concatenate([np.zeros(SAMPLE_RATE, np.float32), speech, np.zeros(SAMPLE_RATE * 3 // 2, np.float32)]))
    return out


def tally(audios: list[np.ndarray], pause_ms: int, settings: TurnDetection) -> dict:
    total: dict[str, int] = {}
    for audio in audios:
        for kind, n in vad_pass(audio, pause_ms, settings)[1].items():
            total[kind] = total.get(kind, 0) + n
    utterances, started = total.get("stopped", 0), total.get("pausing", 0)
    return {
        "utterances": utterances, "decodes_started": started, "decodes_dropped": total.get("resumed", 0),
        "decodes_per_utterance": round(started / max(utterances, 1), 2),
    }  # fmt: skip


def run(args) -> dict:
    settings = TurnDetection(silence_duration_ms=args.silence_ms)
    shared = shared_recordings(args.audio_dir)
    session = session_audio(args.audio_dir, read_manifest(args.audio_dir), seed=0).audio
    session_s = len(session) / SAMPLE_RATE
    rows = []
    for pause_ms in args.pause_ms:
        bench = tally([session], pause_ms, settings)
        rows.append({
            "pause_ms": pause_ms, "head_start_ms": args.silence_ms - pause_ms,
            "shared_recordings": tally(shared, pause_ms, settings), "benchmark_session": bench,
            "decodes_per_s_at_256_sessions": round(256 * bench["decodes_started"] / session_s, 1),
        })  # fmt: skip
    return {
        "benchmark": "turns", "command": command_line(), "machine": machine_info(),
        "config": {"audio_dir": str(args.audio_dir), "silence_duration_ms": args.silence_ms, "recordings": len(shared),
                   "recordings_audio_s": round(sum(map(len, shared)) / SAMPLE_RATE, 1), "session_audio_s": round(session_s, 1)},
        "by_pause": rows,
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--audio-dir", type=Path, default=SHARED_AUDIO)
    p.add_argument("--silence-ms", type=int, default=TurnDetection().silence_duration_ms)
    p.add_argument("--pause-ms", type=lambda v: [int(k) for k in v.split(",")], default=[192, 256, 320, 384],
                   help="pause lengths to count (multiples of the VAD's 32 ms window)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    write_result(args.out, run(args))


if __name__ == "__main__":
    main()
