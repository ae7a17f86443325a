"""Show-o's text-to-image prompt layout (``UniversalPrompting``, task ``t2i_gen``).

Facts from showlab/Show-o ``training/prompting_utils.py`` and ``inference_t2i.py``:

* the Phi tokenizer gets ``[PAD]`` as pad token, then the nine task tokens below, in
  this order (ids 50295 … 50304 for microsoft/phi-1_5, whose ``len`` is 50295); image
  codes follow at ``len(tokenizer) + code``;
* <|sot|> / <|eot|> are the tokenizer's bos / eos (both <|endoftext|> for Phi);
* a prompt becomes ``[<|t2i|>, <|sot|>, text…, <|eot|>]`` (bos prepended unless the
  tokenizer put it there), left-padded with [PAD] to ``max_seq_length + 1`` = 129
  tokens, or cut to 128 tokens + <|eot|>; the image part ``[<|soi|>, N image ids,
  <|eoi|>]`` follows;
* the unconditional prompt is ``""``: ``[pad…, <|t2i|>, <|sot|>, <|eot|>]``.
"""

from __future__ import annotations

import torch

SPECIAL_TOKENS = ("<|soi|>", "<|eoi|>", "<|sov|>", "<|eov|>", "<|t2i|>", "<|mmu|>", "<|t2v|>", "<|v2v|>", "<|lvg|>")
NUM_NEW_TOKENS = 1 + len(SPECIAL_TOKENS)  #: [PAD] + task tokens: Show-o's num_new_special_tokens (10)
MAX_TEXT_LEN = 128  #: configs' dataset.preprocessing.max_seq_length


class ShowoPrompting:
    """Extends a Phi tokenizer the way Show-o does and builds t2i prompt prefixes."""

    def __init__(self, tokenizer, max_text_len: int = MAX_TEXT_LEN) -> None:
        tokenizer.add_special_tokens({"pad_token": "[PAD]"})
        tokenizer.add_tokens(list(SPECIAL_TOKENS))
        self.tokenizer = tokenizer
        ids = tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))
        self.ids = dict(zip(SPECIAL_TOKENS, (int(i) for i in ids)))
        self.pad_id = int(tokenizer.pad_token_id)
        self.bos_id = int(tokenizer.bos_token_id)
        self.eos_id = int(tokenizer.eos_token_id)
        self.text_len = max_text_len + 1  #: prefix length: task token + sot + text + eot, padded

    @property
    def vocab_size(self) -> int:
        """Size of the extended text vocabulary: the id of image code 0."""
        return len(self.tokenizer)

    @property
    def soi_id(self) -> int:
        return self.ids["<|soi|>"]

    @property
    def eoi_id(self) -> int:
        return self.ids["<|eoi|>"]

    def prompt_ids(self, prompts: list[str]) -> torch.Tensor:
        """(B, text_len) long: the text prefix of each t2i sequence (before <|soi|>)."""
        rows = []
        for text in self.tokenizer(list(prompts))["input_ids"]:
            text = list(text)
            if not text or text[0] != self.bos_id:
                text = [self.bos_id] + text
            ids = [self.ids["<|t2i|>"]] + text + [self.eos_id]
            if len(ids) > self.text_len:
                ids = ids[: self.text_len - 1] + [self.eos_id]
            rows.append([self.pad_id] * (self.text_len - len(ids)) + ids)
        return torch.tensor(rows, dtype=torch.long)

    def sequence(self, prompt_ids: torch.Tensor, image_ids: torch.Tensor) -> torch.Tensor:
        """Text prefix (B, text_len) + image vocabulary ids (B, N) → (B, text_len + N + 2)."""
        b = prompt_ids.shape[0]
        soi = torch.full((b, 1), self.soi_id, dtype=torch.long, device=image_ids.device)
        eoi = torch.full((b, 1), self.eoi_id, dtype=torch.long, device=image_ids.device)
        return torch.cat([prompt_ids.to(image_ids.device), soi, image_ids, eoi], dim=1)
