"""Batches: DPO and SFT collates over encoded pairs, and random windows of a token stream for
pre-training.

Every batch uses the same three tensors, so one log-prob routine
(`logprob_kernels.sequence_logprobs`) serves all:

    input_ids (N, T) int64  the sequence prompt + response, right-padded with pad_id
    labels    (N, T) int64  labels[:, t] = input_ids[:, t + 1], the token that position t predicts;
                            -100 where there is none (the last real token and the padding)
    mask      (N, T) bool   True exactly where labels[:, t] is a response token (EOS included)

Labels are shifted here, once, so `logits[:, t]` of a causal LM scores `labels[:, t]` with no
slicing by the caller. Worked example, prompt [5, 6], response [7, 8] (8 = EOS), pad 0, T = 5:

    input_ids  5     6     7     8     0
    labels     6     7     8   -100  -100
    mask       F     T     T     F     F      -> the response tokens 7, 8 are scored from positions
               1, 2

For DPO (Eq. 7 of Rafailov et al., 2023) chosen and rejected share one forward pass: rows 0..B-1 are
prompt + chosen, rows B..2B-1 are prompt + rejected, all padded to one length. Right padding needs
no attention mask: causal attention never looks right of the current position.
"""

from collections.abc import Iterator, Sequence

import torch

IGNORE_INDEX = -100


def collate_responses(rows: Sequence[tuple[list[int], list[int]]],
                      pad_id: int) -> dict[str, torch.Tensor]:
    """Collate N (prompt_ids, response_ids) rows of int lists into one batch, right-padded to the
    longest row.

    The building block of every collate here, and of scoring sampled completions
    (`sentiment.evaluate`). Returns {"input_ids": (N, T) int64, "labels": (N, T) int64 (-100 = no
    target), "mask": (N, T) bool}, T = the longest prompt + response; the mask covers exactly the
    response tokens.
    """
    if not rows:
        raise ValueError("cannot collate an empty list of pairs")
    if not isinstance(pad_id, int) or isinstance(pad_id, bool):
        raise TypeError(f"pad_id must be an int, got {type(pad_id).__name__}")
    for i, (prompt, response) in enumerate(rows):
        if not prompt or not response:
            raise ValueError(f"row {i}: needs at least one prompt token and one response token "
                             f"(got {len(prompt)} and {len(response)}); the first response token "
                             f"is predicted from the last prompt token")
    T = max(len(p) + len(r) for p, r in rows)
    input_ids = torch.full((len(rows), T), pad_id, dtype=torch.int64)  # (N, T)
    labels = torch.full((len(rows), T), IGNORE_INDEX, dtype=torch.int64)  # (N, T)
    mask = torch.zeros((len(rows), T), dtype=torch.bool)  # (N, T)
    for i, (prompt, response) in enumerate(rows):
        seq = torch.tensor(prompt + response, dtype=torch.int64)  # (L,)
        L = len(seq)
        input_ids[i, :L] = seq
        labels[i, :L - 1] = seq[1:]  # position t predicts token t + 1
        mask[i, len(prompt) - 1:L - 1] = True  # the positions whose label is a response token
    return {"input_ids": input_ids, "labels": labels, "mask": mask}


def last_masked_position(mask: torch.Tensor) -> torch.Tensor:
    """(N,) int64: the position of each row's last True in a collate mask (N, T) bool, whose label
    is the response's last token (its EOS when not cut); T - 1 for a row with none (check
    mask.any(dim=1))."""
    T = mask.shape[1]
    return T - 1 - mask.flip(dims=[1]).int().argmax(dim=1)  # (N,)


def response_batches(prompt_ids: Sequence, response_ids: Sequence, pad_id: int,
                     batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
    """collate_responses of rows (prompt_ids[i], response_ids[i]), batch_size rows at a time, in
    order: how a list of sampled completions is scored (its log-probs, a reward model's scores)."""
    for start in range(0, len(prompt_ids), batch_size):
        yield collate_responses(list(zip(prompt_ids[start:start + batch_size],
                                         response_ids[start:start + batch_size])), pad_id)


def dpo_collate(pairs: Sequence, pad_id: int) -> dict[str, torch.Tensor]:
    """Collate B EncodedPairs into one batch of 2B rows: B prompt+chosen rows, then B
    prompt+rejected rows.

    Args:
        pairs: B `EncodedPair`s (prompt_ids, chosen_ids, rejected_ids int lists, each non-empty).
        pad_id: the id written into padding positions (e.g. the EOS id; padding is never scored).
    Returns:
        {"input_ids": (2B, T) int64, "labels": (2B, T) int64 (-100 = no target), "mask": (2B, T)
        bool},
        T = the longest prompt + response. Row b and row B + b hold the same prompt.
    """
    rows = [(p.prompt_ids, p.chosen_ids) for p in pairs] + [(p.prompt_ids, p.rejected_ids)
                                                            for p in pairs]
    return collate_responses(rows, pad_id)


def sft_collate(pairs: Sequence, pad_id: int) -> dict[str, torch.Tensor]:
    """Collate B EncodedPairs for supervised fine-tuning on the chosen response: B rows of prompt +
    chosen.

    Returns the same keys as `dpo_collate`, each (B, T); the mask covers the chosen response (+ EOS)
    only, so the loss is on the response, not on the prompt.
    """
    return collate_responses([(p.prompt_ids, p.chosen_ids) for p in pairs], pad_id)


def lm_batches(tokens, batch_size: int, block_size: int, *, generator: torch.Generator,
               num_batches: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Random windows of a token stream for next-token pre-training (as nanoGPT's get_batch).

    Args:
        tokens: 1-D sequence of token ids (list, numpy array or int tensor), longer than block_size.
        batch_size, block_size: B and T of each batch.
        generator: torch.Generator that draws the window starts (the only randomness).
        num_batches: stop after this many batches; None (default) yields forever.
    Yields:
        (x, y): (B, T) int64 each, y = x shifted by one (y[:, t] is the token after x[:, t]).
    """
    data = torch.as_tensor(tokens, dtype=torch.int64)  # (N,)
    if data.dim() != 1:
        raise ValueError(f"tokens must be 1-D, got shape {tuple(data.shape)}")
    if batch_size < 1 or block_size < 1:
        raise ValueError(f"batch_size and block_size must be >= 1, got {batch_size} "
                         f"and {block_size}")
    if len(data) <= block_size:
        raise ValueError(f"need more than block_size={block_size} tokens for one window, "
                         f"got {len(data)}")
    offsets = torch.arange(block_size)  # (T,)
    produced = 0
    while num_batches is None or produced < num_batches:
        starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator)  # (B,)
        index = starts[:, None] + offsets[None, :]  # (B, T)
        yield data[index], data[index + 1]  # (B, T), (B, T)
        produced += 1
