"""
CLIP's byte-level BPE tokenizer, written out so the whole pipeline is readable in one place.

Text is cleaned (ftfy, HTML entities, whitespace, lower case), split into words with CLIP's regex, each word's
UTF-8 bytes are mapped to printable unicode characters, and the 48,894 merges of the vocabulary file are applied
lowest rank first. The ids are identical to CLIP's: 49,408 tokens, <|startoftext|> 49406, <|endoftext|> 49407.
"""
import gzip
import html
import os
from functools import lru_cache

import ftfy
import regex as re
import torch

VOCAB_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bpe_simple_vocab_16e6.txt.gz")
SOT, EOT = "<|startoftext|>", "<|endoftext|>"


@lru_cache()
def bytes_to_unicode():
    # Every byte gets a printable character, so BPE never sees whitespace or control characters. Printable
    # latin-1 bytes map to themselves; the other 68 are shifted past 255 in order.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def clean(text):
    # ftfy repairs mojibake; entities are unescaped twice because some web text is escaped twice.
    text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return re.sub(r"\s+", " ", text).strip().lower()


class SimpleTokenizer:
    def __init__(self, bpe_path=VOCAB_FILE):
        # The file's first line is a header; CLIP keeps the first 49152 - 256 - 2 merges.
        merges = gzip.open(bpe_path).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
        merges = [tuple(m.split()) for m in merges]
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        # vocabulary: 256 bytes, the same bytes ending a word, one token per merge, then the two specials
        vocab = list(self.byte_encoder.values())
        vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + [SOT, EOT]
        self.encoder = {tok: i for i, tok in enumerate(vocab)}
        self.decoder = {i: tok for tok, i in self.encoder.items()}
        self.bpe_ranks = {m: i for i, m in enumerate(merges)}
        self.cache = {SOT: SOT, EOT: EOT}  # words already split: prompts repeat a few words many times
        self.pat = re.compile(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
                              re.IGNORECASE)
        self.sot_token, self.eot_token = self.encoder[SOT], self.encoder[EOT]

    def bpe(self, token):
        if token in self.cache:
            return self.cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)  # the last symbol carries the end-of-word mark
        while len(word) > 1:
            # merge every occurrence of the lowest-ranked adjacent pair, until no pair is in the table
            pairs = set(zip(word[:-1], word[1:]))
            first, second = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if (first, second) not in self.bpe_ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        out = " ".join(word)
        self.cache[token] = out
        return out

    def encode(self, text):
        ids = []
        for token in self.pat.findall(clean(text)):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(token).split(" "))
        return ids

    def decode(self, ids):
        text = "".join(self.decoder[int(i)] for i in ids)
        return bytearray(self.byte_decoder[c] for c in text).decode("utf-8", errors="replace").replace("</w>", " ")


_tokenizer = None


CONTEXT_LENGTH = 77  # the positions CLIP's text encoder reads


def tokenize(texts, context_length=CONTEXT_LENGTH, truncate=False):
    """Token ids of one text or a list of texts, as a (N, context_length) LongTensor padded with zeros:
    <|startoftext|> text <|endoftext|>. A text that does not fit raises ValueError, unless truncate=True, which
    cuts it and keeps <|endoftext|> as the last token (the text encoder pools there)."""
    global _tokenizer
    if _tokenizer is None:  # built on first use: reading the merges takes a fraction of a second
        _tokenizer = SimpleTokenizer()
    if isinstance(texts, str):
        texts = [texts]
    sot, eot = _tokenizer.sot_token, _tokenizer.eot_token
    result = torch.zeros(len(texts), context_length, dtype=torch.long)
    for i, text in enumerate(texts):
        ids = [sot] + _tokenizer.encode(text) + [eot]
        if len(ids) > context_length:
            if not truncate:
                raise ValueError(f"text {text!r} is {len(ids)} tokens long, more than the context length {context_length}")
            ids = ids[:context_length]
            ids[-1] = eot
        result[i, :len(ids)] = torch.tensor(ids)
    return result
