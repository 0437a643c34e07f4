"""The one vocabulary the three Dexter models share: byte-level BPE trained with the `tokenizers` library on
the records, the design's special tokens, and every tool name as one whole token.

Special tokens sit at fixed ids (PAD must be 0: the engine never scores a PAD label). Text is encoded piece by
piece between special tokens and tool names, so the spaces around them never become tokens of their own.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

SPECIAL_TOKENS = ["[PAD]", "[BLANK]", "[EOS]", "<MEM_QUERY>", "<MEM_FACT>", "<SEP>", "<TOOL_CALL>", "<TOOL_ERROR>",
                  "<TOOL_RESULT>", "<REASON_TASK>", "<REASON_PLAN>", "<REASON_STEP>"]
PAD, BLANK, EOS = 0, 1, 2
TARGET_SIZE = 8000


def splitter(tools: Iterable[str]) -> re.Pattern:
    """Splits text around the special tokens and tool names, keeping them as pieces of their own."""
    whole = SPECIAL_TOKENS + sorted(set(tools))
    return re.compile("(" + "|".join(re.escape(t) for t in sorted(whole, key=len, reverse=True)) + ")")


def text_pieces(text: str, split: re.Pattern) -> list[str]:
    """The text between special tokens and tool names: what the BPE model is trained on."""
    return [p.strip() for i, p in enumerate(split.split(text)) if i % 2 == 0 and p.strip()]


class VocabularyError(ValueError):
    """A tokenizer file that cannot be used; the message is one sentence."""


class Vocabulary:
    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        for i, token in enumerate(SPECIAL_TOKENS):
            if tokenizer.token_to_id(token) != i:
                raise VocabularyError(f"the tokenizer does not hold {token} at id {i}; rebuild the dataset with "
                                      "`lab dexter build`.")
        added = tokenizer.get_added_tokens_decoder()
        self.tools = sorted(t.content for t in added.values() if not t.special)
        self.tool_ids = {t: tokenizer.token_to_id(t) for t in self.tools}
        whole = SPECIAL_TOKENS + self.tools
        self._whole = {t: tokenizer.token_to_id(t) for t in whole}
        self._by_id = {i: t for t, i in self._whole.items()}
        self._split = splitter(self.tools)

    @property
    def size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    @classmethod
    def train(cls, texts: Iterable[str], tools: Iterable[str], size: int = TARGET_SIZE) -> Vocabulary:
        tokenizer = Tokenizer(models.BPE())
        tokenizer.normalizer = normalizers.NFKC()
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tokenizer.decoder = decoders.ByteLevel()
        tools = sorted(set(tools))
        # the tool names are added after training: leave room for them, so the whole is at most `size`
        trainer = trainers.BpeTrainer(vocab_size=size - len(tools), min_frequency=2, special_tokens=SPECIAL_TOKENS,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tokenizer.train_from_iterator(texts, trainer)
        tokenizer.add_tokens([AddedToken(t, single_word=True) for t in tools])
        return cls(tokenizer)

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        path = Path(path)
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # the library raises its own Exception type for every kind of bad file
            reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
            raise VocabularyError(f"{path}: not a tokenizer file ({reason}); rebuild it with `lab dexter build`.") \
                from None
        try:
            return cls(tokenizer)
        except VocabularyError as exc:
            raise VocabularyError(f"{path}: {exc}") from None

    def save(self, path: str | Path) -> None:
        self.tokenizer.save(str(path))

    def id(self, token: str) -> int:
        return self._whole[token]

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for piece in self._split.split(text):
            if piece in self._whole:
                ids.append(self._whole[piece])
            elif piece.strip():
                ids += self.tokenizer.encode(piece.strip(), add_special_tokens=False).ids
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Ids back to text, special tokens and tool names shown as themselves; PAD is left out."""
        words, run = [], []
        for i in ids:
            if i in self._by_id:
                if run:
                    words.append(self.tokenizer.decode(run).strip())
                    run = []
                if i != PAD:
                    words.append(self._by_id[i])
            else:
                run.append(i)
        if run:
            words.append(self.tokenizer.decode(run).strip())
        return " ".join(w for w in words if w)
