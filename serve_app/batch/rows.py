"""The rows of a batch job, one per input file: how an actor emits them and how the driver takes them apart.

The actor renders the requested subtitles from the whole Transcript it holds and sends them in the same Arrow
block as the row, in a column per format; the driver writes those columns as subtitle files and the other fields
as the ``transcripts.jsonl`` row. No Transcript is rebuilt from a row, so nothing the row leaves out is lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import pyarrow as pa

from serve_app.core.formats import render
from serve_app.core.types import Transcript
from serve_app.errors import APIError

SUBTITLE_FORMATS = ("srt", "vtt")
SEGMENT_TYPE = pa.struct([("id", pa.int64()), ("start", pa.float64()), ("end", pa.float64()), ("text", pa.string())])
# The fields of a transcripts.jsonl row, the file users read.
ROW_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("text", pa.string()),
        ("language", pa.string()),
        ("duration", pa.float64()),
        ("segments", pa.list_(SEGMENT_TYPE)),
        ("error", pa.string()),
    ]
)


def subtitle_column(fmt: str) -> str:
    return f"{fmt}_subtitle"


# What an actor returns: a row's fields and one subtitle column per format (null where not asked for or on error).
BLOCK_SCHEMA = pa.schema([*ROW_SCHEMA, *(pa.field(subtitle_column(f), pa.string()) for f in SUBTITLE_FORMATS)])


@dataclass(frozen=True)
class Subtitle:
    path: str  # the input's URI
    fmt: str
    text: str


def error_text(e: BaseException) -> str:
    """An error row's ``error``: the API error code where there is one (``invalid_audio: ...``), else the type."""
    if isinstance(e, APIError):
        return f"{e.code or e.type}: {e.message}"
    return f"{type(e).__name__}: {e}"


def error_row(path: str, error: str, duration: float | None = None) -> dict:
    return {"path": path, "text": None, "language": None, "duration": duration, "segments": [], "error": error}


def transcribed_row(path: str, transcript: Transcript, formats: Iterable[str], task: str) -> dict:
    """A block row for a transcribed file: the JSONL fields and the subtitles of ``formats``."""
    segments = [{"id": s.id, "start": s.start, "end": s.end, "text": s.text} for s in transcript.segments]
    row = {
        "path": path,
        "text": transcript.text,
        "language": transcript.language,
        "duration": transcript.duration,
        "segments": segments,
        "error": None,
    }
    row.update({subtitle_column(fmt): render(transcript, fmt, task)[0] for fmt in formats})
    return row


def split_block(block: pa.Table) -> tuple[list[dict], list[Subtitle]]:
    """A block from the actors as its JSONL rows (without the subtitle columns) and its subtitles."""
    rows = block.select(ROW_SCHEMA.names).to_pylist()
    paths = block.column("path").to_pylist()
    subtitles = [
        Subtitle(path, fmt, text)
        for fmt in SUBTITLE_FORMATS
        for path, text in zip(paths, block.column(subtitle_column(fmt)).to_pylist())
        if text is not None
    ]
    return rows, subtitles
