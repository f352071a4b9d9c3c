"""Where a batch job's files come from and where its results go, on any filesystem pyarrow opens.

Inputs: a directory (walked recursively, audio extensions only), a glob, a list file (one path a line) or a JSONL
manifest (``path``, ``audio_filepath`` or ``file`` per line); relative entries are relative to the list's folder.

Results: part files written atomically (temp file, then rename), one per finished block. A job that is killed and
run again reads the parts to learn which files are done, so nothing is lost or written twice; the final
``transcripts.jsonl`` is the union of the parts, one row per file.
"""

from __future__ import annotations

import fnmatch
import json
import os
import posixpath
import time
import uuid
from dataclasses import dataclass, field
from functools import cached_property
from typing import Iterable

import pyarrow.fs as pafs

AUDIO_EXTENSIONS = frozenset(
    ".wav .flac .mp3 .ogg .oga .opus .m4a .mp4 .m4v .webm .aac .aif .aiff .wma .mka .mkv .mov .amr .3gp .caf".split()
)
LIST_EXTENSIONS = frozenset({".txt", ".lst", ".list"})
MANIFEST_EXTENSIONS = frozenset({".jsonl", ".json"})
MANIFEST_KEYS = ("path", "audio_filepath", "file")
_GLOB_CHARS = "*?["


def open_filesystem(uri: str) -> tuple[pafs.FileSystem, str, str]:
    """``(filesystem, path on it, prefix)``; ``prefix + path`` is the URI again ("" for local paths)."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri)), ""
    fs, path = pafs.FileSystem.from_uri(uri)
    scheme = uri.split("://", 1)[0]
    return fs, path, "" if scheme == "file" else f"{scheme}://"


@dataclass
class Inputs:
    filesystem: pafs.FileSystem
    prefix: str
    paths: list[str] = field(default_factory=list)  # files on ``filesystem`` that exist
    missing: list[str] = field(default_factory=list)  # listed in a list file or manifest, but not there

    def uri(self, path: str) -> str:
        return self.prefix + path

    @cached_property
    def root(self) -> str:
        """The deepest folder holding every input: subtitle files mirror the tree below it."""
        paths = self.paths + self.missing
        return posixpath.commonpath([posixpath.dirname(p) for p in paths]) if paths else "/"


def resolve_inputs(specs: Iterable[str], extensions: frozenset[str] = AUDIO_EXTENSIONS) -> Inputs:
    inputs: Inputs | None = None
    seen: set[str] = set()
    for spec in specs:
        fs, path, prefix = open_filesystem(spec)
        if inputs is None:
            inputs = Inputs(fs, prefix)
        elif (fs.type_name, prefix) != (inputs.filesystem.type_name, inputs.prefix):
            raise ValueError(f"all inputs must be on one filesystem; {spec!r} is not on {inputs.prefix or 'local'}")
        found, missing = _expand(fs, path, extensions)
        for p in found:
            if p not in seen:
                seen.add(p)
                inputs.paths.append(p)
        for p in missing:
            if p not in seen:
                seen.add(p)
                inputs.missing.append(p)
    if inputs is None:
        raise ValueError("no inputs given")
    return inputs


def _expand(fs: pafs.FileSystem, path: str, extensions: frozenset[str]) -> tuple[list[str], list[str]]:
    if any(c in path for c in _GLOB_CHARS):
        # fnmatch: '*' also matches '/', so 'dir/*.wav' finds the .wav files in subfolders too.
        base = _glob_base(path)
        return sorted(p for p in _walk(fs, base) if fnmatch.fnmatchcase(p, path)), []
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        files = _walk(fs, path)
        return sorted(p for p in files if posixpath.splitext(p)[1].lower() in extensions), []
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"input not found: {path}")
    ext = posixpath.splitext(path)[1].lower()
    if ext in LIST_EXTENSIONS or ext in MANIFEST_EXTENSIONS:
        entries = _read_list(fs, path, manifest=ext in MANIFEST_EXTENSIONS)
        infos = fs.get_file_info(entries)
        return (
            [i.path for i in infos if i.type == pafs.FileType.File],
            [i.path for i in infos if i.type != pafs.FileType.File],
        )
    return [path], []


def _glob_base(pattern: str) -> str:
    parts = pattern.split("/")
    for i, part in enumerate(parts):
        if any(c in part for c in _GLOB_CHARS):
            return "/".join(parts[:i]) or "/"
    return pattern


def _walk(fs: pafs.FileSystem, base: str) -> list[str]:
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    return [
        i.path
        for i in infos
        if i.type == pafs.FileType.File and not any(part.startswith(".") for part in posixpath.relpath(i.path, base).split("/"))
    ]


def _read_list(fs: pafs.FileSystem, path: str, *, manifest: bool) -> list[str]:
    with fs.open_input_stream(path) as f:
        lines = f.read().decode("utf-8").splitlines()
    folder = posixpath.dirname(path)
    entries = []
    for n, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if manifest:
            row = json.loads(line)
            entry = next((row[k] for k in MANIFEST_KEYS if k in row), None)
            if not isinstance(entry, str):
                raise ValueError(f"{path}:{n}: no {' / '.join(MANIFEST_KEYS)} field")
        else:
            entry = line
        if "://" in entry:
            entry = open_filesystem(entry)[1]
        entries.append(entry if posixpath.isabs(entry) else posixpath.normpath(posixpath.join(folder, entry)))
    return entries


class OutputDir:
    """The results of one job: ``parts/`` (written as blocks finish), ``transcripts.jsonl``, ``subtitles/``."""

    FINAL = "transcripts.jsonl"

    def __init__(self, uri: str):
        self.fs, self.path, self.prefix = open_filesystem(uri)
        self.parts = posixpath.join(self.path, "parts")
        self.fs.create_dir(self.parts, recursive=True)

    def claim(self, job: dict) -> None:
        """Record what produced these results; refuse to mix in rows of another model or task."""
        path = posixpath.join(self.path, "job.json")
        if self.fs.get_file_info(path).type == pafs.FileType.File:
            with self.fs.open_input_stream(path) as f:
                before = json.loads(f.read())
            if before != job:
                raise ValueError(f"{self.prefix}{self.path} holds results of {before}, not {job}; use another --output")
        else:
            self._write(path, json.dumps(job, sort_keys=True) + "\n")

    def rows(self) -> dict[str, dict]:
        """Every row in the parts, one per path; parts are read in the order written, so a later row wins."""
        infos = self.fs.get_file_info(pafs.FileSelector(self.parts, allow_not_found=True))
        names = sorted(i.path for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(".jsonl"))
        rows: dict[str, dict] = {}
        for name in names:
            with self.fs.open_input_stream(name) as f:
                for line in f.read().decode("utf-8").splitlines():
                    if line.strip():
                        row = json.loads(line)
                        rows[row["path"]] = row
        return rows

    def write_part(self, rows: list[dict]) -> None:
        name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.jsonl"
        self._write(posixpath.join(self.parts, name), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))

    def write_final(self, rows: dict[str, dict]) -> str:
        """The union of the parts, one row per file, sorted by path; also removes temp files a kill left behind."""
        path = posixpath.join(self.path, self.FINAL)
        self._write(path, "".join(json.dumps(rows[p], ensure_ascii=False) + "\n" for p in sorted(rows)))
        for info in self.fs.get_file_info(pafs.FileSelector(self.path, recursive=True)):
            if info.type == pafs.FileType.File and info.base_name.endswith(".tmp"):
                self.fs.delete_file(info.path)
        return self.prefix + path

    def write_subtitle(self, relative: str, text: str) -> None:
        self._write(posixpath.join(self.path, "subtitles", relative), text)

    def write_json(self, name: str, body: dict) -> None:
        self._write(posixpath.join(self.path, name), json.dumps(body, indent=2) + "\n")

    def _write(self, path: str, text: str) -> None:
        """Write to a temp name, then rename: a reader (or a re-run after a kill) never sees half a file."""
        self.fs.create_dir(posixpath.dirname(path), recursive=True)
        tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
        with self.fs.open_output_stream(tmp) as f:
            f.write(text.encode("utf-8"))
        self.fs.move(tmp, path)
