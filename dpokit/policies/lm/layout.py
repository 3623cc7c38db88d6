"""Where each completion token of a collated batch sits in the model's input rows.

``collate`` gives one right-padded row per (response, record), the prompt repeated in each.
``padded`` runs those rows as they are. ``shared`` rebuilds them: one segment per record,
``prompt + response_0 + … + response_{G-1}``, with a block attention mask (each response
sees the prompt and its own earlier tokens only) and position ids that restart after the
prompt for each response, so the prompt is encoded once for all G responses. With
``pack``, several segments share a row (block-diagonal mask, positions restarting per
segment), up to the longest segment's length, so short records fill the padding.

Either way a ``Plan`` says, for every completion token, which hidden state predicts it
(``src``), its id (``labels``) and where its log-prob goes in the (N, T') output of the
padded layout (``dst``), so every caller sees the same tensors whatever the layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Plan:
    inputs: dict[str, torch.Tensor]
    """Keyword inputs of the model: input_ids (R, L), attention_mask (2-D or 4-D), position_ids."""
    src: torch.Tensor
    """(K,) flat index into the (R·L) hidden states: the position that predicts each token."""
    labels: torch.Tensor
    """(K,) the completion token ids."""
    dst: torch.Tensor
    """(K,) flat index into the (N·T') output."""
    mask: torch.Tensor
    """(N, T') completion mask of the output (the padded layout's, from the first completion column)."""


def _first_completion(cmask: torch.Tensor) -> torch.Tensor:
    """(N,) index of each row's first completion token (its prompt length)."""
    return cmask.float().argmax(dim=1)


def _output_slots(batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Rows and columns of every completion token (row-major), the output mask and its first column."""
    cmask = batch["completion_mask"]
    first = int(_first_completion(cmask).min())
    rows, cols = cmask.nonzero(as_tuple=True)
    return rows, cols, cmask[:, first:], first


def padded_plan(batch: dict) -> Plan:
    """The collated rows as they are; a token at column t is predicted from column t − 1."""
    ids = batch["input_ids"]
    rows, cols, mask, first = _output_slots(batch)
    width = ids.shape[1]
    return Plan({"input_ids": ids, "attention_mask": batch["attention_mask"]},
                rows * width + cols - 1, ids[rows, cols], rows * mask.shape[1] + cols - first, mask)


def _segments(batch: dict, group: int, share: bool) -> list[tuple[list[int], list[tuple[int, list[int]]]]]:
    """(prompt ids, [(output row, response ids)]) of each segment, read back from the collated
    rows: one segment per record (its G responses after one prompt) when ``share``, else one per row."""
    ids, attn = batch["input_ids"].tolist(), batch["attention_mask"].sum(1).tolist()
    starts = _first_completion(batch["completion_mask"]).tolist()
    if not share:
        return [(ids[i][:starts[i]], [(i, ids[i][starts[i]:attn[i]])]) for i in range(len(ids))]
    n = len(ids) // group
    return [(ids[b][:starts[b]], [(g * n + b, ids[g * n + b][starts[b]:attn[g * n + b]]) for g in range(group)])
            for b in range(n)]


def _rows(lengths: list[int], pack: bool) -> list[list[int]]:
    """Segment indices of each row: one per row, or first-fit up to the longest segment's length."""
    if not pack:
        return [[i] for i in range(len(lengths))]
    cap, rows, free = max(lengths), [], []
    for i, n in enumerate(lengths):
        r = next((r for r, f in enumerate(free) if f >= n), None)
        if r is None:
            rows.append([])
            free.append(cap)
            r = len(rows) - 1
        rows[r].append(i)
        free[r] -= n
    return rows


@dataclass
class _Rows:
    """The model inputs being filled, and per completion token its source, label and slot."""

    ids: torch.Tensor
    pos: torch.Tensor
    see: torch.Tensor
    out_width: int
    first: int
    src: list = field(default_factory=list)
    labels: list = field(default_factory=list)
    dst: list = field(default_factory=list)

    def put(self, r: int, at: int, prompt: list[int], responses: list[tuple[int, list[int]]]) -> int:
        """Write one segment into row ``r`` from column ``at``; returns the column after it."""
        p, width = len(prompt), self.ids.shape[1]
        self.ids[r, at:at + p] = torch.tensor(prompt, dtype=torch.long)
        self.pos[r, at:at + p] = torch.arange(p)
        self.see[r, at:at + p, at:at + p] = torch.ones(p, p, dtype=torch.bool).tril()
        s = at + p
        for row, resp in responses:
            c = len(resp)
            if c:
                self.ids[r, s:s + c] = torch.tensor(resp, dtype=torch.long)
                self.pos[r, s:s + c] = torch.arange(p, p + c)
                self.see[r, s:s + c, at:at + p] = True
                self.see[r, s:s + c, s:s + c] = torch.ones(c, c, dtype=torch.bool).tril()
                # token k of the response is predicted at s+k−1, its first one at the prompt's end
                self.src.append(torch.cat([torch.tensor([at + p - 1]), torch.arange(s, s + c - 1)]) + r * width)
                self.labels.append(torch.tensor(resp, dtype=torch.long))
                self.dst.append(row * self.out_width + torch.arange(p, p + c) - self.first)
            s += c
        return s


def shared_plan(batch: dict, group: int, pack: bool, share: bool = True) -> Plan:
    """Each record's prompt once, followed by its G responses (``share``; else each row its own
    segment), segments packed into rows when ``pack``; see the module docstring."""
    segs = _segments(batch, group, share)
    lengths = [len(p) + sum(len(r) for _, r in rs) for p, rs in segs]
    rows = _rows(lengths, pack)
    width, device = max(lengths), batch["input_ids"].device
    _, _, mask, first = _output_slots(batch)
    out = _Rows(torch.zeros((len(rows), width), dtype=torch.long), torch.zeros((len(rows), width), dtype=torch.long),
                torch.eye(width, dtype=torch.bool).repeat(len(rows), 1, 1),  # padding sees itself: no empty rows
                mask.shape[1], first)
    for r, members in enumerate(rows):
        at = 0
        for b in members:
            at = out.put(r, at, *segs[b])
    inputs = {"input_ids": out.ids.to(device), "attention_mask": out.see.unsqueeze(1).to(device),
              "position_ids": out.pos.to(device)}
    return Plan(inputs, torch.cat(out.src).to(device), torch.cat(out.labels).to(device),
                torch.cat(out.dst).to(device), mask)
