"""The shapes of Voxtral checkpoints the byte plan knows without their files (the weights are not on this machine).

``params`` writes them as the checkpoint's ``params.json`` would hold them; the test fixture that builds a checkpoint
with random weights (fixtures/voxtral_checkpoint.py) uses the same function for its tiny and full sizes.
"""

from __future__ import annotations

NUM_SPECIAL = 1000
SIZES = {
    "full": dict(
        decoder=dict(dim=3072, n_layers=30, head_dim=128, hidden_dim=8192, n_heads=32, n_kv_heads=8, vocab_size=131072),
        encoder=dict(dim=1280, n_layers=32, head_dim=64, hidden_dim=5120, n_heads=20),
        vocab_entries=131072 - NUM_SPECIAL,
    ),
    "tiny": dict(
        decoder=dict(dim=128, n_layers=2, head_dim=32, hidden_dim=256, n_heads=4, n_kv_heads=2, vocab_size=2000),
        encoder=dict(dim=128, n_layers=2, head_dim=32, hidden_dim=256, n_heads=4),
        vocab_entries=1000,
    ),
}
AUDIO_ENCODING = {"sampling_rate": 16000, "num_mel_bins": 128, "hop_length": 160, "window_size": 400}
DOWNSAMPLE = 4
MAX_SOURCE_POSITIONS = 1500  # the encoder's positions for one 30 s window: 3000 mel frames through a stride-2 conv


def params(size: str) -> dict:
    s = SIZES[size]
    return {
        **s["decoder"],
        "rope_theta": 1e8,
        "norm_eps": 1e-5,
        "max_seq_len": 32768,
        "max_position_embeddings": 32768,
        "tied_embeddings": False,
        "multimodal": {
            "whisper_model_args": {
                "encoder_args": {
                    **s["encoder"],
                    "vocab_size": 51866,
                    "max_source_positions": MAX_SOURCE_POSITIONS,
                    "audio_encoding_args": AUDIO_ENCODING,
                },
                "downsample_args": {"downsample_factor": DOWNSAMPLE},
            }
        },
    }

# Hub ids whose params.json the byte plan reads from here.
KNOWN_SHAPES = {"mistralai/Voxtral-Mini-3B-2507": "full"}
