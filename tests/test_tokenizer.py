"""The BPE tokenizer against open_clip's independent implementation of CLIP's tokenizer."""
import random

import pytest
import torch

from tokenizer import SimpleTokenizer, tokenize

open_clip_tokenizer = pytest.importorskip("open_clip.tokenizer")

CORPUS = [
    "A pedestrian wearing a hat",
    "a photo of a person with a backpack.",
    "Hello,   World!!  How's it going? I'd say we'll've done",
    "numbers 0 12 345 6789 3.14159 1e-6 #42 $100 50%",
    "accents: café naïve résumé Ångström Øresund São Paulo",
    "CJK: 東京タワー 北京 서울 ひらがな",
    "emoji 😀👍🏽 🇫🇷 ❤️ family 👨‍👩‍👧",
    "html &amp; entities &lt;b&gt;bold&lt;/b&gt; &quot;quoted&quot; &amp;amp;",
    "odd\twhite\nspace\r\n  and\u00a0nbsp\u2003em",
    "mojibake: cafÃ© doesnâ€™t",
    "UPPER lower MiXeD CaSe",
    "punctuation... --- !!! ??? ()[]{} <> / \\ | ~ ` ^",
    "hyphen-ated under_scored dot.ted slash/ed",
    "",
    "   ",
    "a" * 300,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "Ελληνικά кириллица עברית العربية हिन्दी",
]


def random_strings(n, seed=0):
    # mixes of ASCII, Latin-1, Greek, CJK, emoji and whitespace, from a fixed seed
    rng = random.Random(seed)
    pools = ["abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", "0123456789", " \t\n", ".,;:!?'\"-()&<>#",
             "àéîõüçñßøå", "αβγδεζηθ", "中文字符测试日本語", "😀🎉🚀💡", "&amp;&lt;&gt;"]
    out = []
    for _ in range(n):
        k = rng.randint(0, 40)
        out.append("".join(rng.choice(rng.choice(pools)) for _ in range(k)))
    return out


@pytest.fixture(scope="module")
def tokenizers():
    return SimpleTokenizer(), open_clip_tokenizer.SimpleTokenizer()


def test_ids_match_open_clip(tokenizers):
    ours, ref = tokenizers
    for text in CORPUS + random_strings(300):
        assert ours.encode(text) == ref.encode(text), text


def test_tokenize_matches_open_clip():
    texts = CORPUS[:13] + random_strings(50, seed=1)
    ref = open_clip_tokenizer.SimpleTokenizer()(texts, context_length=77)
    ours = tokenize(texts)
    assert ours.dtype == torch.long and ours.shape == (len(texts), 77)
    assert torch.equal(ours, ref)


def test_special_ids_and_vocab_size(tokenizers):
    ours, _ = tokenizers
    assert len(ours.encoder) == 49408
    assert ours.sot_token == 49406 and ours.eot_token == 49407
    row = tokenize("a hat")[0]
    assert row[0] == 49406 and row[3] == 49407 and row[4:].eq(0).all()


def test_decode_round_trip(tokenizers):
    ours, _ = tokenizers
    for text in ["a pedestrian wearing a hat", "size 7 and café", "東京 😀"]:
        # decode marks each word end with a space
        assert ours.decode(ours.encode(text)).split() == text.split()
    # cleaning lower-cases, and CLIP's regex makes every digit a word of its own
    assert ours.decode(ours.encode("Hello World 12")) == "hello world 1 2 "


def test_too_long_raises_with_the_text():
    text = "hat " * 80
    with pytest.raises(ValueError, match=r"text 'hat hat .* 82 tokens long, more than the context length 77"):
        tokenize(text)


def test_truncate_keeps_eot():
    ids = tokenize("hat " * 80, truncate=True)[0]
    assert ids.shape == (77,)
    assert ids[0] == 49406 and ids[-1] == 49407
    assert (ids[1:-1] == tokenize("hat")[0, 1]).all()
    ref = open_clip_tokenizer.SimpleTokenizer()(["hat " * 80], context_length=77)[0]
    assert torch.equal(ids, ref)
