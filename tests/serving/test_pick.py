"""``pick_tokens``: a batch's rows picked together (greedy rows by one argmax over the batch) are the tokens each
row's own ``pick_token`` gives, with its own generator, whatever rows share its batch."""

from __future__ import annotations

import torch

from loraops_serving.schema import Sampling
from loraops_serving.sequence import Row, Sequence, pick_token, pick_tokens

SAMPLINGS = [
    Sampling(),
    Sampling(do_sample=True, temperature=0.7, top_p=0.9, seed=3),
    Sampling(repetition_penalty=1.3),
    Sampling(),
    Sampling(do_sample=True, top_k=5, seed=4),
    Sampling(do_sample=True, repetition_penalty=1.2, seed=5),
]


def rows() -> list[Sequence]:
    return [Sequence(Row("p", None, 8, (), s), [1, 2, 3, 2], ticket=None, index=0) for s in SAMPLINGS]


def test_the_batch_picks_what_each_row_picks_alone() -> None:
    logits = torch.randn(len(SAMPLINGS), 50, generator=torch.Generator().manual_seed(0))
    logits[:, 2] = logits.max(-1).values + 0.1  # a seen token, the best by a little: the penalty rows turn away
    together, alone = rows(), rows()
    for step in range(4):
        picked = pick_tokens(logits, together)
        if step == 0:
            assert picked[0] == picked[3] == 2 != picked[2]  # greedy: the argmax; the penalty row: another token
        expected = [pick_token(logits[i], s.row.sampling, s.seen, s.generator) for i, s in enumerate(alone)]
        assert picked == expected, step
        for seq, token in zip(together + alone, picked + expected):
            seq.advance(token, None, lambda t: "x" * len(t))


def test_a_subset_of_rows_picks_the_same() -> None:
    logits = torch.randn(len(SAMPLINGS), 50, generator=torch.Generator().manual_seed(1))
    keep = [4, 0, 1]
    picked = pick_tokens(logits[keep], [rows()[i] for i in keep])
    everyone = pick_tokens(logits, rows())
    assert picked == [everyone[i] for i in keep]
