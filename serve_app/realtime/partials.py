"""Partial text that is never retracted: what successive decodes of a growing utterance agree on.

A word is sent once two successive decodes agree on it and on every word before it, and neither ends with it (a
decode's last word is often the speaker's word cut in half, or carries a full stop the speaker has not reached).
The final decode ends the utterance: the deltas sent plus the last one spell the ``completed`` transcript exactly.
"""

from __future__ import annotations

from difflib import SequenceMatcher


class PartialText:
    def __init__(self):
        self.sent: list[str] = []
        self._previous: list[str] | None = None

    def update(self, text: str) -> str:
        """The delta a new partial decode allows ('' when it adds nothing agreed)."""
        words, previous = text.split(), self._previous
        self._previous = words
        if previous is None or words[: len(self.sent)] != self.sent:
            return ""
        agreed = 0
        for a, b in zip(previous[:-1], words[:-1]):
            if a != b:
                break
            agreed += 1
        return self._send(words[len(self.sent) : agreed])

    def final(self, text: str) -> tuple[str, str]:
        """(the last delta, the completed transcript) for the final decode's text.

        When the final decode changed a word already sent, the sent words stand (a delta cannot be taken back) and
        the final's words after the place they align to complete the text (aligned through the last partial decode,
        which holds the sent words and those after them).
        """
        words, n = text.split(), len(self.sent)
        before = self._previous if self._previous and self._previous[:n] == self.sent else self.sent
        rest = words[_aligned(before, n, words) :]
        delta = self._send(rest)
        return delta, " ".join(self.sent)

    def _send(self, words: list[str]) -> str:
        if not words:
            return ""
        delta = (" " if self.sent else "") + " ".join(words)
        self.sent.extend(words)
        return delta


def _aligned(before: list[str], position: int, after: list[str]) -> int:
    """Where ``position`` in the word list ``before`` falls in ``after``."""
    if after[:position] == before[:position]:
        return position
    for tag, i1, i2, j1, j2 in SequenceMatcher(a=before, b=after, autojunk=False).get_opcodes():
        if position <= i2:
            return j1 + (position - i1) if tag == "equal" else j2
    return len(after)
