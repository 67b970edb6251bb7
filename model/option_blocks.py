"""A sample's options laid out as equal-size blocks of one suffix call (FlexLlava.choose): the
prompt's KV cache is shared, each block is causal within itself and sees the whole real prefix."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class OptionBlocks:
    """A sample's options laid out as equal-size blocks of one suffix call (block-causal)."""

    tokens: torch.Tensor  # [B, rows] input ids: last prompt token, then each option's tokens but its last
    targets: torch.Tensor  # [B, rows] the next token of each row (-100: padding)
    row_valid: torch.Tensor  # [B, rows]
    offset: torch.Tensor  # [B, rows] position within its block
    block: int  # rows per block
    n_blocks: int

    @property
    def rows(self) -> int:
        return self.block * self.n_blocks

    @staticmethod
    def build(prompt_ids, option_ids, device) -> OptionBlocks:
        b = len(prompt_ids)
        block = max(len(s) for sample in option_ids for s in sample)
        n_blocks = max(len(s) for s in option_ids)
        ts = n_blocks * block
        tok = torch.zeros(b, ts, dtype=torch.long)
        targets = torch.full((b, ts), -100, dtype=torch.long)
        row_valid = torch.zeros(b, ts, dtype=torch.bool)
        offset = torch.zeros(b, ts, dtype=torch.long)
        for i, (pids, opts) in enumerate(zip(prompt_ids, option_ids)):
            for k, suffix in enumerate(opts):
                rows, s = [pids[-1]] + suffix[:-1], k * block
                tok[i, s:s + len(rows)] = torch.tensor(rows)
                targets[i, s:s + len(rows)] = torch.tensor(suffix)
                row_valid[i, s:s + len(rows)] = True
                offset[i, s:s + block] = torch.arange(block)
        tok, targets, row_valid, offset = (x.to(device) for x in (tok, targets, row_valid, offset))
        return OptionBlocks(tok, targets, row_valid, offset, block, n_blocks)

    def visible(self, prefix_valid: torch.Tensor) -> torch.Tensor:
        """[B, rows, prefix + rows]: the whole real prefix, then causal within the row's own block."""
        b, ts, dev = prefix_valid.shape[0], self.rows, prefix_valid.device
        idx = torch.arange(ts, device=dev)
        blk = idx // self.block
        within = (blk[:, None] == blk[None, :]) & (idx[None, :] <= idx[:, None])
        own = (within[None] & self.row_valid[:, None, :]) | torch.eye(ts, dtype=torch.bool, device=dev)[None]
        return torch.cat([prefix_valid[:, None, :].expand(b, ts, prefix_valid.shape[1]), own], dim=2)

    def mean_nll(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [B, rows, V] -> [B, n_blocks] mean NLL of each option's tokens."""
        b = logits.shape[0]
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), self.targets.reshape(-1), reduction="none",
                              ignore_index=-100).reshape(b, self.n_blocks, self.block)
        counts = (self.targets != -100).reshape(b, self.n_blocks, self.block).sum(-1)
        return nll.sum(-1) / counts.clamp(min=1)
