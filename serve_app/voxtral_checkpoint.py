"""Build a Voxtral-shaped checkpoint in Mistral format (``params.json``, ``tekken.json``, ``consolidated.safetensors``).

For tests and benchmarks where the real weights cannot be downloaded:
- ``tiny``: small dimensions and random weights under the original tensor names (std 1/sqrt(fan_in)); it runs on a
  CPU in well under a second per request, and speech and silence give different tokens.
- ``full``: Voxtral-Mini-3B-2507's exact shapes, without a weights file; serve it with ``load_format: dummy``.

    python -m serve_app.voxtral_checkpoint DIR [--size tiny|full]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

NUM_SPECIAL = 1000
_NAMED_SPECIALS = {
    0: "<unk>", 1: "<s>", 2: "</s>", 3: "[INST]", 4: "[/INST]", 5: "[AVAILABLE_TOOLS]", 6: "[/AVAILABLE_TOOLS]",
    7: "[TOOL_RESULTS]", 8: "[/TOOL_RESULTS]", 9: "[TOOL_CALLS]", 10: "[IMG]", 11: "<pad>", 12: "[IMG_BREAK]",
    13: "[IMG_END]", 14: "[PREFIX]", 15: "[MIDDLE]", 16: "[SUFFIX]", 17: "[SYSTEM_PROMPT]", 18: "[/SYSTEM_PROMPT]",
    19: "[TOOL_CONTENT]", 24: "[AUDIO]", 25: "[BEGIN_AUDIO]", 32: "[ARGS]", 33: "[CALL_ID]", 34: "[TRANSCRIBE]",
}  # fmt: skip

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
                    "max_source_positions": 1500,
                    "audio_encoding_args": AUDIO_ENCODING,
                },
                "downsample_args": {"downsample_factor": DOWNSAMPLE},
            }
        },
    }


def tekken(size: str) -> dict:
    import mistral_common

    shipped = json.loads((Path(mistral_common.__file__).parent / "data" / "tekken_240911.json").read_text())
    vocab = shipped["vocab"][: SIZES[size]["vocab_entries"]]
    specials = [
        {"rank": i, "token_str": _NAMED_SPECIALS.get(i, f"<SPECIAL_{i}>"), "is_control": True} for i in range(NUM_SPECIAL)
    ]
    return {
        "config": {
            "pattern": shipped["config"]["pattern"],
            "num_vocab_tokens": len(vocab),
            "default_vocab_size": SIZES[size]["decoder"]["vocab_size"],
            "default_num_special_tokens": NUM_SPECIAL,
            "version": "v11",
        },
        "vocab": vocab,
        "special_tokens": specials,
        "audio": {
            "sampling_rate": 16000,
            "frame_rate": 12.5,
            "chunk_length_s": 30.0,
            "audio_encoding_config": {k: v for k, v in AUDIO_ENCODING.items() if k != "sampling_rate"},
        },
    }


def tensor_shapes(size: str) -> dict[str, tuple[int, ...]]:
    """The tensors of a Voxtral checkpoint, by their names in ``consolidated.safetensors``."""
    d, e = SIZES[size]["decoder"], SIZES[size]["encoder"]
    shapes: dict[str, tuple[int, ...]] = {}
    q, kv = d["n_heads"] * d["head_dim"], d["n_kv_heads"] * d["head_dim"]
    for i in range(d["n_layers"]):
        p = f"layers.{i}."
        shapes |= {
            p + "attention.wq.weight": (q, d["dim"]),
            p + "attention.wk.weight": (kv, d["dim"]),
            p + "attention.wv.weight": (kv, d["dim"]),
            p + "attention.wo.weight": (d["dim"], q),
            p + "attention_norm.weight": (d["dim"],),
            p + "ffn_norm.weight": (d["dim"],),
            p + "feed_forward.w1.weight": (d["hidden_dim"], d["dim"]),
            p + "feed_forward.w2.weight": (d["dim"], d["hidden_dim"]),
            p + "feed_forward.w3.weight": (d["hidden_dim"], d["dim"]),
        }
    shapes |= {
        "mm_whisper_embeddings.tok_embeddings.weight": (d["vocab_size"], d["dim"]),
        "norm.weight": (d["dim"],),
        "output.weight": (d["vocab_size"], d["dim"]),
    }
    w = "mm_whisper_embeddings.whisper_encoder."
    eq = e["n_heads"] * e["head_dim"]
    shapes |= {
        w + "conv_layers.0.conv.weight": (e["dim"], AUDIO_ENCODING["num_mel_bins"], 3),
        w + "conv_layers.0.conv.bias": (e["dim"],),
        w + "conv_layers.1.conv.weight": (e["dim"], e["dim"], 3),
        w + "conv_layers.1.conv.bias": (e["dim"],),
        w + "transformer.norm.weight": (e["dim"],),
        w + "transformer.norm.bias": (e["dim"],),
    }
    for i in range(e["n_layers"]):
        p = f"{w}transformer.layers.{i}."
        shapes |= {
            p + "attention.wq.weight": (eq, e["dim"]),
            p + "attention.wq.bias": (eq,),
            p + "attention.wk.weight": (eq, e["dim"]),
            p + "attention.wv.weight": (eq, e["dim"]),
            p + "attention.wv.bias": (eq,),
            p + "attention.wo.weight": (e["dim"], eq),
            p + "attention.wo.bias": (e["dim"],),
            p + "attention_norm.weight": (e["dim"],),
            p + "attention_norm.bias": (e["dim"],),
            p + "ffn_norm.weight": (e["dim"],),
            p + "ffn_norm.bias": (e["dim"],),
            p + "feed_forward.w1.weight": (e["hidden_dim"], e["dim"]),
            p + "feed_forward.w1.bias": (e["hidden_dim"],),
            p + "feed_forward.w2.weight": (e["dim"], e["hidden_dim"]),
            p + "feed_forward.w2.bias": (e["dim"],),
        }
    shapes |= {
        "mm_whisper_embeddings.audio_language_projection.0.weight": (d["dim"], e["dim"] * DOWNSAMPLE),
        "mm_whisper_embeddings.audio_language_projection.2.weight": (d["dim"], d["dim"]),
    }
    return shapes


def random_weights(size: str, seed: int = 0) -> dict:
    import torch

    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in tensor_shapes(size).items():
        if name.endswith("norm.weight"):
            t = torch.ones(shape)
        elif len(shape) == 1:
            t = torch.zeros(shape)
        else:
            fan_in = shape[1] * (shape[2] if len(shape) > 2 else 1)
            t = torch.randn(shape, generator=gen) / fan_in**0.5
        out[name] = t.to(torch.bfloat16).contiguous()
    return out


def weights_bytes(size: str, bytes_per_param: int = 2) -> int:
    n = 0
    for shape in tensor_shapes(size).values():
        k = 1
        for x in shape:
            k *= x
        n += k
    return n * bytes_per_param


def build(directory: str | os.PathLike, size: str = "tiny", seed: int = 0) -> Path:
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    (out / "params.json").write_text(json.dumps(params(size), indent=2))
    (out / "tekken.json").write_text(json.dumps(tekken(size)))
    if size == "tiny":
        from safetensors.torch import save_file

        save_file(random_weights(size, seed), str(out / "consolidated.safetensors"))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory")
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = build(args.directory, args.size, args.seed)
    print(f"{args.size} Voxtral-shaped checkpoint in {path} ({weights_bytes(args.size) / 2**30:.2f} GiB of bf16 weights)")


if __name__ == "__main__":
    main()
