"""A guard against runaway decoding: a model stuck in a loop repeats the same words until it runs out of tokens."""

from __future__ import annotations

import re

_ALNUM = re.compile(r"\w")


def cut_repetition(text: str, min_repeats: int = 4, min_chars: int = 24, max_period: int = 200) -> str:
    """``text`` with a loop at its end cut to its first copy, else ``text`` unchanged.

    A loop is one span of 1 to ``max_period`` characters (with a letter or digit in it) repeated back to back, case
    aside, at least ``min_repeats`` times and over at least ``min_chars`` characters; the last copy may be cut short,
    as it is when decoding stops at ``max_tokens``. Characters rather than words, so that it works for languages
    written without spaces. The cut goes to the first word boundary after one copy ("late. Thank you." rather than
    "late. Thank you"); of the loops found, the one that keeps the least text wins.
    """
    text = text.rstrip()
    folded = text.casefold()
    if len(folded) != len(text):  # casefold changed the length (e.g. "ß"): compare as written
        folded = text
    n = len(text)
    best = n
    for period in range(1, min(max_period, (n - 1) // max(1, min_repeats - 1)) + 1):
        # Walk back while each character equals the one a period later: text[start:] then repeats with this period.
        start = n - period
        while start > 0 and folded[start - 1] == folded[start - 1 + period]:
            start -= 1
        looped = n - start
        # min_repeats copies, the last of which may be cut short (by max_tokens, or by the strip of its trailing space)
        if looped > (min_repeats - 1) * period and looped >= min_chars and _ALNUM.search(text, start, start + period):
            best = min(best, _word_end(text, start + period, period))
    return text[:best].rstrip() if best < n else text


def _word_end(text: str, cut: int, within: int) -> int:
    """The first place from ``cut`` (and fewer than ``within`` further) that ends a word; else ``cut``."""
    for c in range(cut, min(cut + within, len(text))):
        if text[c - 1].isspace() or text[c].isspace():
            return c
    return cut
