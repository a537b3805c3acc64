#!/usr/bin/env python3
"""Reference token ids for qkscope's GPT-2 BPE (tests/test_bpe.c), from tiktoken itself.

Run from the repo root:  .venv-ref/bin/python tests/reference/make_tokenizer_ref.py

The encoding is built from the same vocabulary files qkscope reads (../shared/data/gpt2/), with
GPT-2's original pattern and <|endoftext|> = 50256.  Writes tests/reference/data/tokenizer/:
  tinyshakespeare.u16, utf8-demo.u16   ids of the whole file, little-endian uint16, no header
  cases.bin                            edge cases of SPEC §6 and 10,000 random strings:
      "QKTOKREF" u32 count, then per case: u8 flags (bit 0: allow <|endoftext|> as special),
      u32 n_bytes, the bytes, u32 n_ids, n_ids x u16 ids            (all little-endian)

Valid UTF-8 is encoded with tiktoken's own encode / encode_ordinary.  tiktoken cannot run its
regex over invalid UTF-8 (encode takes str), so strings with invalid bytes use the method of
tiktoken's _encode_only_native_bpe: split with the same pattern in Python's `regex` over the
surrogateescape decoding (each invalid byte is a lone surrogate: a [^\\s\\p{L}\\p{N}] character),
then tiktoken's BPE (_encode_single_piece) on each piece's original bytes.  That this split equals
tiktoken's own is asserted on every valid input below.
"""
import os
import random
import struct
import unicodedata

import regex
import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.path.join(ROOT, "..", "shared", "data")
OUT = os.path.join(ROOT, "tests", "reference", "data", "tokenizer")
GPT2_PAT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT = "<|endoftext|>"


def make_encoding(pat):
    ranks = data_gym_to_mergeable_bpe_ranks(os.path.join(DATA, "gpt2", "vocab.bpe"),
                                            os.path.join(DATA, "gpt2", "encoder.json"))
    return tiktoken.Encoding(name="gpt2-ref", pat_str=pat, mergeable_ranks=ranks, special_tokens={EOT: 50256},
                             explicit_n_vocab=50257)


ENC = make_encoding(GPT2_PAT)
# tiktoken's faster spelling of the same pattern (tiktoken_ext.openai_public.r50k_pat_str): cross-check.
ENC_FAST = make_encoding(r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s""")
PAT = regex.compile(GPT2_PAT)


def split_encode(data: bytes, allow_special: bool):
    """regex split over the surrogateescape text, then tiktoken BPE per piece."""
    segments = data.split(EOT.encode()) if allow_special else [data]
    out = []
    for k, seg in enumerate(segments):
        if k:
            out.append(50256)
        for piece in PAT.findall(seg.decode("utf-8", "surrogateescape")):
            out.extend(ENC._encode_single_piece(piece.encode("utf-8", "surrogateescape")))
    return out


def reference(data: bytes, allow_special: bool):
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return split_encode(data, allow_special)
    ids = ENC.encode(text, allowed_special={EOT}) if allow_special else ENC.encode_ordinary(text)
    fast = ENC_FAST.encode(text, allowed_special={EOT}) if allow_special else ENC_FAST.encode_ordinary(text)
    assert ids == fast, "tiktoken's r50k pattern disagrees with GPT-2's on %r" % text[:80]
    assert ids == split_encode(data, allow_special), "regex split disagrees with tiktoken on %r" % text[:80]
    assert ENC.decode_bytes(ids) == data
    return ids


EDGE = [
    "DON'T", "don't", "I’m", "I'm", "hello   ", "hello   world", "a\u00a0b", "a \u00a0b", "x²", "x²³ ½ Ⅷ ٣",
    "e\u0301 cafe\u0301 n\u0303o", " \u0301\u0301x", "क्षत्रिय", "ภาษาไทย", "1" * 300, "3.14159265358979323846",
    "'s 's 'S 'll 'LL 're 've 'm 'd 't", "''s", "!'s", "a'll", "we're you've they'd", "",
    " ", "  ", "\n", "\n\n\nfoo", "   leading", "trailing\n\n", "\t\tx", " \u3000x", "a\u2028b", "x\u200by",
    "\ufeffbom", "x\r\n\r\ny", "\x00a\x00", "emoji 😀🤖 👨‍👩‍👧", "中文字符 日本語 한국어", "Ελληνικά Русский עברית العربية",
    "<|endoftext|>", "hello<|endoftext|>world ", "a <|endoftext|> b<|endoftext|><|endoftext|>", "<|endoftext",
    "    def f(x):\n        return x  # comment\n", "$100,000.00!!! ... ---- ====",
    # pieces longer than 64 bytes (qkscope's heap merge path)
    "=-" * 200, "".join(random.Random(7).choice("etaoinshrdlucmfwyp") for _ in range(3000)),
    "abc" * 100, "ééàü" * 40, "1234567890" * 50 + "x", "1" * 301, "=" * 99, "a" * 129, " " + "!" * 77,
]
EDGE_BYTES = [
    b"\xff", b"abc\x80def", b"\xe2\x82", b"\xe2\x82 x", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
    b"\xf8\x88\x80\x80\x80", b" \xff\xfe", b"hello \xc3(", b"x\xc3", b"\x80\x80\x80 abc", b"1\xff2", b"a\xffb",
    b"  \xff", b"\xff   ", b"'\xffs", b"\xc3\xa9\xc3", "naïve".encode() + b"\xe9", b"!\xff" * 100,
]

# Pools for random strings (characters whose classes agree across the Unicode versions involved).
WORDS = ["the", "The", "DON", "quick", "Brown", "fox", "jumps", "über", "naïve", "café", "straße", "東京",
         "数据", "한국", "Привет", "γεια", "שלום", "مرحبا", "नमस्ते", "ไทย", "x", "a", "I"]
SPACES = [" ", "  ", "   ", "\n", "\n\n", "\t", "\r\n", "\u00a0", "\u3000", "\u2028", "\u2003", " \n ", "\x0b", "\x0c"]
MISC = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL", "’", "'", '"', "!", "?", "...", ",", ".", "-",
        "--", "(", ")", "[", "]", "{", "}", "#", "@", "$", "%", "^", "&", "*", "_", "=", "+", "/", "\\", "|", "~",
        "`", "<", ">", ";", ":", "😀", "🤖", "\u200b", "\u0301", "\u0303", "\ufeff", "\x00", "\x7f", "²", "½",
        "Ⅷ", "٣", "¼", "①", "<|endoftext|>", "<|", "|>"]
INVALID = [b"\x80", b"\xff", b"\xfe", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80", b"\xf0\x9f", b"\xc0\x80", b"\xf5"]


def random_case(rng: random.Random):
    with_invalid = rng.random() < 0.35
    parts = []
    for _ in range(rng.randint(1, 20)):
        r = rng.random()
        if r < 0.3:
            parts.append(rng.choice(WORDS).encode())
        elif r < 0.5:
            parts.append(rng.choice(SPACES).encode())
        elif r < 0.7:
            parts.append(rng.choice(MISC).encode())
        elif r < 0.8:
            parts.append(str(rng.randint(0, 10 ** rng.randint(1, 12))).encode())
        elif r < 0.88 and not with_invalid:
            # any assigned code point (the valid path is checked against tiktoken directly)
            while True:
                c = rng.randint(0xA0, 0x2FFFF)
                if not (0xD800 <= c <= 0xDFFF) and unicodedata.category(chr(c)) != "Cn":
                    break
            parts.append(chr(c).encode())
        elif with_invalid:
            parts.append(rng.choice(INVALID))
        else:
            parts.append(bytes([rng.randint(0x20, 0x7e)]))
    return b"".join(parts), rng.random() < 0.2


def write_u16(path, ids):
    assert max(ids) < 65536
    with open(path, "wb") as f:
        f.write(struct.pack("<%dH" % len(ids), *ids))


def main():
    os.makedirs(OUT, exist_ok=True)
    for name in ["tinyshakespeare", "utf8-demo"]:
        with open(os.path.join(DATA, "text", name + ".txt"), "rb") as f:
            data = f.read()
        ids = reference(data, False)
        write_u16(os.path.join(OUT, name + ".u16"), ids)
        print("%s: %d bytes -> %d ids" % (name, len(data), len(ids)))
    cases = [(s.encode(), False) for s in EDGE] + [(s.encode(), True) for s in EDGE if EOT in s or "<|" in s]
    cases += [(b, False) for b in EDGE_BYTES] + [(b + EOT.encode() + b, True) for b in EDGE_BYTES[:5]]
    rng = random.Random(20240520)
    cases += [random_case(rng) for _ in range(10000)]
    with open(os.path.join(OUT, "cases.bin"), "wb") as f:
        f.write(b"QKTOKREF" + struct.pack("<I", len(cases)))
        for data, allow in cases:
            ids = reference(data, allow)
            f.write(struct.pack("<BI", 1 if allow else 0, len(data)) + data)
            f.write(struct.pack("<I%dH" % len(ids), len(ids), *ids))
    n_invalid = sum(1 for d, _ in cases if not _valid(d))
    print("cases.bin: %d cases (%d with invalid UTF-8)" % (len(cases), n_invalid))


def _valid(b):
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


if __name__ == "__main__":
    main()
