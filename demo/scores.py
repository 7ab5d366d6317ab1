"""ROUGE-L of an answer against dolly's reference answer.

Kept here rather than adding ``rouge-score`` (and its nltk/absl dependencies) for one number: the F-measure of the
longest common subsequence of words, with rouge-score's default tokenization (lower case, runs of ``[a-z0-9]``,
no stemming), so the figures match ``rouge_scorer.RougeScorer(["rougeL"])`` on the same texts.
"""

from __future__ import annotations

import re


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence of ``a`` and ``b`` (one row of the table at a time)."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(reference: str, answer: str) -> float:
    """ROUGE-L F1 of ``answer`` against ``reference`` (0 when either has no words)."""
    ref, ans = words(reference), words(answer)
    common = lcs_length(ref, ans)
    if common == 0:
        return 0.0
    precision, recall = common / len(ans), common / len(ref)
    return 2 * precision * recall / (precision + recall)
