"""Audio decoding (serve_app/audio.py), without Ray: every clip of the shared set, and synthetic edge cases."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from helpers import wav_bytes

from serve_app.audio.decode import decode_audio, load_file
from serve_app.core.types import SAMPLE_RATE
from serve_app.errors import InvalidAudio, PayloadTooLarge, UnsupportedMediaType

pytestmark = pytest.mark.fast


def tone(seconds: float, sample_rate: int, freq: float = 440.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_every_manifest_clip_decodes_to_its_duration(manifest, audio_dir):
    """Every container/codec in the set decodes to 16 kHz mono float32 within 50 ms of the manifest's duration."""
    wrong = []
    for clip in manifest:
        audio = load_file(str(audio_dir / clip["file"]))
        assert audio.dtype == np.float32 and audio.ndim == 1, clip["file"]
        duration = len(audio) / SAMPLE_RATE
        if abs(duration - clip["duration_s"]) > 0.05 or not np.abs(audio).max() > 0:
            wrong.append((clip["file"], clip["duration_s"], duration))
    assert not wrong, wrong
    assert len({(c["file"].rsplit(".", 1)[1], c["codec"]) for c in manifest}) >= 9  # the set really spans the types


def test_stereo_is_downmixed_to_the_mean_of_the_channels():
    left = tone(1.0, SAMPLE_RATE)
    stereo = np.stack([left, np.zeros_like(left)], axis=1)
    audio = decode_audio(wav_bytes(stereo, subtype="FLOAT"))
    assert audio.shape == (SAMPLE_RATE,)
    np.testing.assert_allclose(audio, left / 2, atol=1e-6)
    # Opposite-phase channels cancel: a true mean, not "take the first channel".
    cancel = decode_audio(wav_bytes(np.stack([left, -left], axis=1), subtype="FLOAT"))
    assert np.abs(cancel).max() < 1e-6


def test_stereo_speech_clip_is_mono_after_decoding(audio_dir):
    import soundfile as sf

    both, sr = sf.read(audio_dir / "en_stereo_two_speakers.wav", dtype="float32")
    assert both.shape[1] == 2 and sr == SAMPLE_RATE
    audio = load_file(str(audio_dir / "en_stereo_two_speakers.wav"))
    np.testing.assert_allclose(audio, both.mean(axis=1), atol=1e-6)


@pytest.mark.parametrize("rate", [44_100, 22_050, 48_000, 8_000])
def test_other_rates_are_resampled_to_16k(rate):
    audio = decode_audio(wav_bytes(tone(2.0, rate), rate))
    assert abs(len(audio) - 2 * SAMPLE_RATE) <= 1
    # The 440 Hz tone survives resampling: its spectral peak stays at 440 Hz.
    spectrum = np.abs(np.fft.rfft(audio))
    assert abs(np.fft.rfftfreq(len(audio), 1 / SAMPLE_RATE)[spectrum.argmax()] - 440) < 2


def test_16k_pcm_is_not_altered():
    samples = (np.random.default_rng(0).integers(-20000, 20000, SAMPLE_RATE)).astype(np.int16)
    audio = decode_audio(wav_bytes(samples))
    np.testing.assert_array_equal(audio, samples.astype(np.float32) / 32768)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples_are_rejected(bad):
    samples = tone(0.5, SAMPLE_RATE)
    samples[1000] = bad
    with pytest.raises(InvalidAudio, match="NaN or infinite"):
        decode_audio(wav_bytes(samples, subtype="FLOAT"))


def test_duration_limit(audio_dir):
    data = (audio_dir / "en_pocketsphinx_goforward.wav").read_bytes()  # 2.786 s
    assert len(decode_audio(data, max_duration_s=3.0)) == pytest.approx(2.786 * SAMPLE_RATE, abs=16)
    with pytest.raises(PayloadTooLarge, match="longer than the maximum of 2 s"):
        decode_audio(data, max_duration_s=2.0)


def test_duration_limit_on_the_ffmpeg_path(audio_dir):
    data = (audio_dir / "en_librivox_sonnet001_head.mp4").read_bytes()  # 9 s of AAC: libsndfile cannot read it
    with pytest.raises(PayloadTooLarge):
        decode_audio(data, max_duration_s=5.0)


def test_minimum_duration():
    with pytest.raises(InvalidAudio, match="shorter than the minimum"):
        decode_audio(wav_bytes(tone(0.02, SAMPLE_RATE)), min_duration_s=0.05)


def test_empty_and_garbage_are_invalid_audio():
    with pytest.raises(InvalidAudio, match="empty"):
        decode_audio(b"")
    with pytest.raises(InvalidAudio, match="Could not decode"):
        decode_audio(np.random.default_rng(1).bytes(50_000), filename="noise.wav", content_type="audio/wav")


def test_a_wav_header_without_samples_is_invalid():
    with pytest.raises(InvalidAudio):
        decode_audio(wav_bytes(np.zeros(0, np.float32)))


def test_text_is_unsupported_media_type():
    with pytest.raises(UnsupportedMediaType):
        decode_audio(b"hello, this is not audio\n", filename="notes.txt", content_type="text/plain")


def test_the_bytes_decide_not_the_name(audio_dir):
    data = (audio_dir / "en_pocketsphinx_goforward.wav").read_bytes()
    for name, ctype in [("clip.mp3", "audio/mpeg"), ("clip.txt", "text/plain"), (None, None)]:
        assert len(decode_audio(data, filename=name, content_type=ctype)) == len(decode_audio(data))


def test_truncated_wav_decodes_what_is_there(audio_dir):
    data = (audio_dir / "en_pocketsphinx_goforward.wav").read_bytes()
    cut = data[: 44 + 40_001]  # the header is intact; the data stops mid-sample, half-way through
    audio = decode_audio(cut)
    assert abs(len(audio) - 20_000) <= 1


def test_a_header_claiming_a_huge_length_is_not_trusted(audio_dir):
    import resource

    peak_before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    data = bytearray((audio_dir / "en_pocketsphinx_goforward.wav").read_bytes())
    at = data.find(b"data")
    struct.pack_into("<I", data, at + 4, 0xFFFFFF00)  # about 37 hours of 16 kHz 16-bit mono
    struct.pack_into("<I", data, 4, 0xFFFFFF00 + at)
    audio = decode_audio(bytes(data))
    assert len(audio) == pytest.approx(2.786 * SAMPLE_RATE, abs=16)
    # and with a small limit the short real audio still fits: the claimed length is never used
    assert len(decode_audio(bytes(data), max_duration_s=3.0)) == len(audio)
    # the claimed 37 h would be 8.5 GB as float32: the process's peak memory must not have grown anywhere near that
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before_kib < 200 * 1024
