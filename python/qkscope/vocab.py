"""Token ids -> text.

Where the pieces come from, first found wins:
  1. the file's own `vocab/` group (docs/FORMAT.md: `ids` int32 (N), `offsets` int64 (N + 1),
     `bytes` uint8: the bytes of id ids[n] are bytes[offsets[n]:offsets[n + 1]]);
  2. the `vocab=` argument of qkscope.open: a GPT-2 BPE folder or its encoder.json / vocab.json;
  3. the run's `[corpus] vocab` key (read from the file's `config` attribute) when that path exists.
Without any, an id is shown as `<id>`, so nothing fails for want of a vocabulary.
"""
import json
import os
from pathlib import Path

import numpy as np


def _byte_decoder():
    # GPT-2's bytes_to_unicode, inverted: the vocabulary's JSON spells each byte as one character.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


class Vocab:
    """id -> bytes; `text(ids)` joins the bytes first, so a character split over tokens decodes."""

    def __init__(self, pieces, source):
        self.pieces = pieces  # dict id -> bytes
        self.source = source

    @classmethod
    def from_group(cls, g, source):
        ids, offsets, data = g["ids"][:], g["offsets"][:], g["bytes"][:].tobytes()
        assert len(offsets) == len(ids) + 1, f"{source}: vocab/offsets must have len(ids) + 1 entries"
        return cls({int(i): data[offsets[n]:offsets[n + 1]] for n, i in enumerate(ids)}, source)

    @classmethod
    def from_path(cls, path):
        p = Path(path)
        if p.is_dir():
            p = next((p / n for n in ("encoder.json", "vocab.json") if (p / n).exists()), p / "encoder.json")
        dec = _byte_decoder()
        table = json.loads(p.read_text(encoding="utf-8"))
        return cls({int(i): bytes(dec[c] for c in tok) for tok, i in table.items()}, str(p))

    def piece(self, i):
        b = self.pieces.get(int(i))
        return None if b is None else b

    def token(self, i):
        """One token as display text (its bytes, invalid UTF-8 replaced), `<id>` when unknown."""
        b = self.piece(i)
        return f"<{int(i)}>" if b is None else b.decode("utf-8", errors="replace")

    def text(self, ids):
        out, pending = [], b""
        for i in ids:
            b = self.piece(i)
            if b is None:
                out.append(pending.decode("utf-8", errors="replace"))
                pending = b""
                out.append(f"<{int(i)}>")
            else:
                pending += b
        out.append(pending.decode("utf-8", errors="replace"))
        return "".join(out)


class NoVocab(Vocab):
    def __init__(self):
        super().__init__({}, None)


def config_value(config_text, section, key):
    """A key of a qkscope config as the run saw it: the INI text, then its `# --set S.K=V` lines."""
    value, cur = None, None
    for line in config_text.splitlines():
        s = line.strip()
        if s.startswith("# --set "):
            k, _, v = s[len("# --set "):].partition("=")
            if k.strip() == f"{section}.{key}":
                value = v.strip()
            continue
        if not s or s[0] in "#;":
            continue
        if s.startswith("[") and s.endswith("]"):
            cur = s[1:-1].strip()
        elif cur == section and "=" in s:
            k, _, v = s.partition("=")
            if k.strip() == key:
                value = v.split(" ;")[0].split(" #")[0].strip()
    return value


def find_vocab(h5, vocab=None, config_path=None, more=()):
    """The Vocab for an open qkscope file (see the module docstring for the order).  `more`: other
    files of the same run (the shards of a folder), each storing the pieces of its own tokens."""
    groups = [f for f in (h5, *more) if "vocab" in f]
    if groups:
        v = Vocab.from_group(groups[0]["vocab"], f"{h5.filename}:vocab/")
        for f in groups[1:]:
            v.pieces.update(Vocab.from_group(f["vocab"], f.filename).pieces)
        return v
    if vocab is not None:
        return Vocab.from_path(vocab)
    cfg = h5.attrs.get("config")
    if cfg is not None:
        v = config_value(cfg.decode() if isinstance(cfg, bytes) else str(cfg), "corpus", "vocab")
        if v:
            bases = [Path.cwd()] + ([Path(config_path).parent] if config_path else [])
            for base in bases:
                p = Path(v) if os.path.isabs(v) else base / v
                if p.exists():
                    return Vocab.from_path(p)
    return NoVocab()


def as_ids(a):
    return np.asarray(a, dtype=np.int64).ravel().tolist()
