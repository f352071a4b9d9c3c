"""The chunking core without HTTP: the VAD on real clips, the pure stitching and repetition functions, and the
Transcriber over the real Whisper backend loaded in this process."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fixtures.assembled_audio import assemble
from serve_app.audio.decode import load_file
from serve_app.audio.vad import (
    WINDOW,
    Chunk,
    has_speech,
    model_windows,
    pack,
    padded,
    prefix_windows,
    speech_chunks,
    speech_regions,
)
from serve_app.config import ChunkingConfig, WhisperConfig
from serve_app.core.repetition import cut_repetition
from serve_app.core.transcriber import ChunkResult, Transcriber, place, stitch
from serve_app.core.types import SAMPLE_RATE, Segment, TranscribeOptions, Transcript, Word

CONFIG = ChunkingConfig()


def _noise(seconds: float, dbfs: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(seconds * SAMPLE_RATE)) * 10 ** (dbfs / 20)).astype(np.float32)


def _check_chunks(chunks: list[Chunk], n_samples: int, max_chunk_s: float) -> None:
    assert all(0 <= c.start < c.end <= n_samples for c in chunks)
    assert all(a.end <= b.start for a, b in zip(chunks, chunks[1:])), "chunks overlap or are out of order"
    assert all(c.duration_s <= max_chunk_s + 1e-6 for c in chunks)


# --- the VAD on real audio ---


def test_every_clip_has_speech_including_the_quiet_ones(manifest, audio_dir):
    quiet = [row for row in manifest if row["peak_dbfs"] < -40]
    assert len(quiet) >= 3
    for row in manifest:
        audio = load_file(str(audio_dir / row["file"]))
        chunks = speech_chunks(audio, CONFIG)
        assert chunks, f"{row['file']} (peak {row['peak_dbfs']} dBFS): no speech found"
        assert has_speech(audio, CONFIG), f"{row['file']}: the short-clip check misses the speech"
        _check_chunks(chunks, len(audio), CONFIG.max_chunk_s)
        covered = sum(c.duration_s for c in chunks)
        assert covered >= 0.5 * row["duration_s"], f"{row['file']}: only {covered:.1f} s of speech"


def test_very_quiet_speech_is_kept_by_normalising_the_peak(audio_dir):
    from faster_whisper.vad import get_vad_model

    speech = load_file(str(audio_dir / "en_librivox_sense_and_sensibility_0870.wav"))
    quiet = (speech / np.abs(speech).max() * 10 ** (-70 / 20)).astype(np.float32)
    raw = get_vad_model()(np.pad(quiet, (0, -len(quiet) % WINDOW))).reshape(-1)
    assert (raw > CONFIG.threshold).mean() < 0.05, "Silero hears this level without help: the test shows nothing"
    chunks = speech_chunks(quiet, CONFIG)
    assert sum(c.duration_s for c in chunks) >= 0.7 * len(speech) / SAMPLE_RATE


@pytest.mark.parametrize(
    "audio",
    [
        np.zeros(10 * SAMPLE_RATE, np.float32),
        _noise(15, -50),
        _noise(15, -80),
        (np.sin(2 * np.pi * 50 * np.arange(10 * SAMPLE_RATE) / SAMPLE_RATE) * 0.003).astype(np.float32),
    ],
    ids=["digital-silence", "white-noise-50dBFS", "white-noise-80dBFS", "mains-hum"],
)
def test_no_speech_gives_no_chunks(audio):
    assert speech_chunks(audio, CONFIG) == []
    assert not has_speech(audio, CONFIG)


def test_speech_after_seconds_of_silence_is_found_by_the_short_clip_check(audio_dir):
    """The check looks at a growing prefix: speech that starts late (after 2 s, 8 s) must still be found."""
    speech = load_file(str(audio_dir / "en_pocketsphinx_goforward.wav"))
    for lead_s in (0.0, 5.0, 20.0):
        audio = np.concatenate([np.zeros(int(lead_s * SAMPLE_RATE), np.float32), speech])
        assert has_speech(audio, CONFIG), f"speech after {lead_s} s of silence was missed"


def test_the_check_normalises_a_prefix_exactly_as_the_whole_audio(audio_dir):
    """The short-clip check normalises only the audio its prefix depends on (the gain looks 5 s ahead)."""
    speech = load_file(str(audio_dir / "en_jfk_inaugural_16k.wav"))
    loud_later = np.concatenate([0.05 * speech, speech, np.zeros(1234, np.float32)])  # the peak comes seconds later
    whole = model_windows(loud_later)
    for k in (1, 62, 250, 700, len(whole), len(whole) + 9):
        np.testing.assert_array_equal(prefix_windows(loud_later, k), whole[:k])


def test_long_clips_are_cut_into_bounded_chunks(audio_dir):
    for name in ["en_librivox_sonnet001.mp3", "de_librivox_simplicissimus_title.mp3"]:
        audio = load_file(str(audio_dir / name))
        chunks = speech_chunks(audio, CONFIG)
        assert len(chunks) >= 2
        _check_chunks(chunks, len(audio), CONFIG.max_chunk_s)
        short = speech_chunks(audio, CONFIG.model_copy(update={"max_chunk_s": 10}))
        assert len(short) >= 5
        _check_chunks(short, len(audio), 10)


def test_chunks_of_an_assembled_recording_stay_inside_the_clips(audio_dir, manifest):
    rec = assemble(audio_dir, manifest)
    chunks = speech_chunks(rec.audio, CONFIG)
    _check_chunks(chunks, len(rec.audio), CONFIG.max_chunk_s)
    pad = CONFIG.speech_pad_ms / 1000 + 0.05
    for c in chunks:
        assert any(s - pad <= c.start_s and c.end_s <= e + pad for s, e in rec.speech), f"chunk {c} spans a gap"
    for s, e in rec.speech:
        assert any(c.start_s < e and c.end_s > s for c in chunks), f"clip at {s:.1f}-{e:.1f} s was dropped"


def test_vad_over_parallel_slices_matches_one_pass(audio_dir, manifest):
    rec = assemble(audio_dir, manifest)  # over three minutes: three slices
    one = speech_chunks(rec.audio, CONFIG.model_copy(update={"vad_threads": 1}))
    sliced = speech_chunks(rec.audio, CONFIG.model_copy(update={"vad_threads": 4}))
    assert len(one) == len(sliced)
    for a, b in zip(one, sliced):
        assert abs(a.start_s - b.start_s) < 0.5 and abs(a.end_s - b.end_s) < 0.5


# --- the segmentation steps on made-up probabilities ---


def test_speech_regions_use_hysteresis_and_minimum_silence():
    p = np.array([0.1, 0.9, 0.9, 0.4, 0.9, 0.2, 0.9, 0.1, 0.1, 0.1, 0.9, 0.9, 0.1])
    # 0.4 sits between the thresholds (speech goes on); one window below 0.35 is not yet min_silence=2.
    assert speech_regions(p, 0.5, min_silence=2, min_speech=1) == [(1, 7), (10, 12)]
    assert speech_regions(p, 0.5, min_silence=2, min_speech=3) == [(1, 7)]
    assert speech_regions(np.full(5, 0.9), 0.5, 2, 1) == [(0, 5)]


def test_padding_never_overlaps_a_neighbour():
    assert padded([(10, 20), (23, 40), (60, 70)], pad=5, n=72) == [(5, 21), (21, 45), (55, 72)]


def test_pack_splits_long_regions_at_the_quietest_window_and_breaks_at_long_gaps():
    probs = np.full(200, 0.9)
    probs[70] = 0.05
    assert pack([(0, 200)], probs, max_len=100, max_gap=10) == [(0, 70), (70, 169), (169, 200)]
    regions = [(0, 20), (25, 40), (60, 80), (82, 130)]
    assert pack(regions, probs, max_len=100, max_gap=10) == [(0, 40), (60, 130)]


# --- placing and stitching chunk transcripts ---


def test_an_untimed_transcript_spans_its_chunk():
    chunk = Chunk(5 * SAMPLE_RATE, 12 * SAMPLE_RATE)
    result = place(Transcript(text=" hello there ", language="en", duration=7.0), chunk)
    assert result.text == "hello there"
    assert [(s.start, s.end, s.text) for s in result.segments] == [(5.0, 12.0, "hello there")]


def test_timed_segments_and_words_are_shifted_and_kept_inside_the_chunk():
    chunk = Chunk(10 * SAMPLE_RATE, 20 * SAMPLE_RATE)
    segs = [
        Segment(0, 0.5, 4.0, " one", words=[Word(0.5, 1.0, " one")]),
        Segment(1, 4.0, 4.0, "  "),
        Segment(2, 6.0, 10.6, " two", words=[Word(9.0, 10.6, " two")]),
    ]
    result = place(Transcript(text="one two", language="en", duration=10.0, segments=segs), chunk)
    assert [(s.start, s.end, s.text) for s in result.segments] == [(10.5, 14.0, " one"), (16.0, 20.0, " two")]
    assert [(w.start, w.end) for w in result.segments[1].words] == [(19.0, 20.0)]


def test_a_repetition_loop_is_cut_from_text_and_segments():
    chunk = Chunk(0, 30 * SAMPLE_RATE)
    segs = [Segment(0, 0.0, 3.0, " It was late."), *(Segment(i, 3.0 + i, 4.0 + i, " Thank you.") for i in range(1, 9))]
    text = " ".join(s.text.strip() for s in segs)
    result = place(Transcript(text=text, language="en", duration=30.0, segments=segs), chunk)
    assert result.text == "It was late. Thank you."
    assert [s.text.strip() for s in result.segments] == ["It was late.", "Thank you."]
    kept = place(Transcript(text=text, language="en", duration=30.0, segments=segs), chunk, cut_repetitions=False)
    assert kept.text == text and len(kept.segments) == 9


def test_stitch_orders_renumbers_and_removes_overlap():
    a = ChunkResult("one", "en", [Segment(0, 1.0, 5.0, "one")])
    b = ChunkResult("", None, [])
    c = ChunkResult("two", "en", [Segment(0, 4.5, 9.0, "two"), Segment(1, 9.0, 8.0, "three")])
    t = stitch([a, b, c], duration=10.0)
    assert t.text == "one two" and t.language == "en" and t.duration == 10.0
    assert [(s.id, s.start, s.end) for s in t.segments] == [(0, 1.0, 5.0), (1, 5.0, 9.0), (2, 9.0, 9.0)]


# --- the repetition guard ---


@pytest.mark.parametrize(
    "text, expected",
    [
        ("I said thank you thank you thank you thank you thank you than", "I said thank you"),
        ("la la la la la la la la la la la la la la", "la"),
        ("ありがとうございますありがとうございますありがとうございますありがとうございますありがと", "ありがとうございます"),
        ("Okay. OKAY. okay. Okay. okay. Okay. okay.", "Okay."),
        ("Thank you. Thank you. Thank you. Thank you.", "Thank you."),  # four copies, the last one's space stripped
        ("no no no no no", "no no no no no"),  # short: people do say this
        ("Wait... what?!?!?!?!?!?!?!?!?!?!?!", "Wait... what?!?!?!?!?!?!?!?!?!?!?!"),  # punctuation only
        ("", ""),
    ],
)
def test_cut_repetition_examples(text, expected):
    assert cut_repetition(text) == expected


def test_real_transcripts_are_left_alone(manifest):
    for row in manifest:
        assert cut_repetition(row["transcript"]) == row["transcript"].rstrip()


@given(st.text(max_size=60), st.text(alphabet="abcdefgh ", min_size=1, max_size=12), st.integers(4, 30))
def test_cut_repetition_cuts_any_loop_to_at_most_one_copy(prefix, unit, repeats):
    text = prefix + unit * repeats
    out = cut_repetition(text)
    assert text.startswith(out)
    # min_chars counts the loop as written, trailing white space stripped ("aaa " x 6 is 23 characters, not 24)
    if unit.strip() and len((unit * repeats).rstrip()) >= 24:
        assert len(out) < len(prefix) + 2 * len(unit)


@given(st.text(max_size=300))
def test_cut_repetition_only_ever_truncates(text):
    out = cut_repetition(text)
    assert text.startswith(out) and out == out.rstrip()


# --- the Transcriber over the real Whisper backend in this process ---


class CountingBackend:
    """The real Whisper backend, with each call's audio length and max_tokens recorded and concurrency counted."""

    def __init__(self, inner):
        self.inner = inner
        self.calls: list[tuple[float, int | None]] = []
        self.in_flight = self.most_in_flight = 0

    async def transcribe(self, audio, options):
        self.calls.append((len(audio) / SAMPLE_RATE, options.max_tokens))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            return await self.inner.transcribe(audio, options)
        finally:
            self.in_flight -= 1


@pytest.fixture(scope="module")
def whisper():
    from serve_app.backends.whisper import WhisperBackend

    return WhisperBackend(WhisperConfig(num_workers=2, cpu_threads=1))


def test_silence_and_noise_never_reach_the_backend(whisper):
    backend = CountingBackend(whisper)
    transcriber = Transcriber(backend, CONFIG)
    for audio in [np.zeros(40 * SAMPLE_RATE, np.float32), _noise(40, -50), _noise(5, -45)]:
        t = asyncio.run(transcriber.transcribe(audio, TranscribeOptions()))
        assert (t.text, t.segments) == ("", [])
        assert t.duration == pytest.approx(len(audio) / SAMPLE_RATE)
    assert backend.calls == []


class CancelRecordingBackend:
    """Passes calls through and records which ones were cancelled while in flight."""

    def __init__(self, inner):
        self.inner = inner
        self.calls = self.cancelled = 0

    async def transcribe(self, audio, options):
        self.calls += 1
        try:
            return await self.inner.transcribe(audio, options)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


def test_speech_check_alongside_starts_the_backend_at_once_and_silence_cancels_it(whisper, audio_dir):
    alongside = CONFIG.model_copy(update={"speech_check": "alongside"})
    backend = CancelRecordingBackend(whisper)
    noise = _noise(5, -45)
    t = asyncio.run(Transcriber(backend, alongside).transcribe(noise, TranscribeOptions()))
    assert (t.text, t.segments) == ("", [])
    assert (backend.calls, backend.cancelled) == (1, 1)  # it was in flight when the check said "no speech"

    speech = load_file(str(audio_dir / "en_jfk_inaugural_16k.wav"))
    backend = CancelRecordingBackend(whisper)
    a = asyncio.run(Transcriber(backend, alongside).transcribe(speech, TranscribeOptions()))
    b = asyncio.run(Transcriber(whisper, CONFIG).transcribe(speech, TranscribeOptions()))
    assert (backend.calls, backend.cancelled) == (1, 0)
    assert a.text == b.text and "ask not" in a.text.lower()


def test_chunks_go_to_the_backend_concurrently_and_come_back_in_order(whisper, audio_dir):
    audio = load_file(str(audio_dir / "en_librivox_sonnet001.mp3"))
    concurrent, sequential = CountingBackend(whisper), CountingBackend(whisper)
    a = asyncio.run(Transcriber(concurrent, CONFIG).transcribe(audio, TranscribeOptions()))
    b = asyncio.run(Transcriber(sequential, CONFIG.model_copy(update={"max_parallel_chunks": 1})).transcribe(audio, TranscribeOptions()))
    assert len(concurrent.calls) >= 2 and concurrent.most_in_flight == len(concurrent.calls)
    assert sequential.most_in_flight == 1
    assert a.text == b.text
    assert "fairest creatures" in a.text.lower()
    for seconds, max_tokens in concurrent.calls:
        assert seconds <= CONFIG.max_chunk_s
        assert max_tokens == max(CONFIG.min_max_tokens, math.ceil(seconds * CONFIG.max_tokens_per_s))


def test_stream_yields_chunk_texts_in_order_that_join_to_the_transcript(whisper, audio_dir):
    audio = load_file(str(audio_dir / "en_librivox_sonnet001.mp3"))
    transcriber = Transcriber(whisper, CONFIG)

    async def collect():
        return [d async for d in transcriber.stream(audio, TranscribeOptions())]

    deltas = asyncio.run(collect())
    assert len(deltas) >= 2
    assert "".join(deltas) == asyncio.run(transcriber.transcribe(audio, TranscribeOptions())).text


def test_short_audio_goes_whole_and_chunking_off_skips_the_vad(whisper, audio_dir):
    audio = load_file(str(audio_dir / "en_jfk_inaugural_16k.wav"))
    on, off = CountingBackend(whisper), CountingBackend(whisper)
    asyncio.run(Transcriber(on, CONFIG).transcribe(audio, TranscribeOptions()))
    assert [c[0] for c in on.calls] == [pytest.approx(len(audio) / SAMPLE_RATE)]
    asyncio.run(Transcriber(off, CONFIG.model_copy(update={"enabled": False})).transcribe(np.zeros(SAMPLE_RATE, np.float32), TranscribeOptions()))
    assert len(off.calls) == 1
