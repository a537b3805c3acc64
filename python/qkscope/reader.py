"""Run files, sharded run folders and static files as Python objects that show text, not ids.

    import qkscope
    run = qkscope.open("build/demo/run.h5")        # or a sharded folder OUT/, or `qkscope merge`'s file
    run.metrics()                                   # heads x metrics table (summary/metric_mean)
    h = run.head("1.3")
    h.pairs(top=20)                                 # heaviest (query feature, key feature) pairs
    h.lookfor(window, pos)                          # one query: look-for features, attended keys, pairs
    h.examples(f, g)                                # strongest occurrences of a pair, with the text
    static = qkscope.open("build/demo/static.h5"); static.head("1.3").q2k(f)

Layout: docs/FORMAT.md.  Feature slots holding the index type's maximum are unused and dropped here.
"""
import json
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from . import neuronpedia
from .vocab import find_vocab

GROUPS = ["feature", "decoder_bias", "error", "attention_bias"]


def attr(obj, name, default=None):
    """An attribute as str / int / float (qkscope stores strings as fixed-length bytes)."""
    if name not in obj.attrs:
        return default
    v = obj.attrs[name]
    if isinstance(v, bytes):
        return v.decode()
    return v.item() if hasattr(v, "item") else v


def _check(f, formats):
    if attr(f, "complete", 0) != 1:
        raise ValueError(f"{f.filename}: not complete (no root attribute complete = 1): the command that wrote it failed or is still running")
    fmt = attr(f, "format")
    if fmt not in formats:
        raise ValueError(f"{f.filename}: format is {fmt!r}, expected one of {', '.join(formats)}")
    return fmt


def _layer_head(name):
    l, _, h = str(name).partition(".")
    return int(l), int(h)


def _unused(idx):
    return np.iinfo(idx.dtype).max


def open(path, vocab=None):  # noqa: A001 - the package's entry point reads as qkscope.open
    """A Run (run file, `qkscope merge` file, or sharded folder with manifest.json) or a Static file.

    vocab: a GPT-2 BPE folder or encoder.json to decode tokens when the file stores no pieces.
    """
    p = Path(path)
    if p.is_dir():
        if (p / "plan.json").exists() and not (p / "manifest.json").exists():
            raise ValueError(f"{p}: a Slurm sweep folder (plan.json): merge its parts first, `qkscope merge {p} -o all.h5`, and open all.h5")
        if not (p / "manifest.json").exists():
            raise ValueError(f"{p}: a folder without manifest.json is not a sharded qkscope run")
        return Run._from_folder(p, vocab)
    f = h5py.File(p, "r")
    fmt = _check(f, ("qkscope-run", "qkscope-static"))
    return Run([f], f, vocab) if fmt == "qkscope-run" else Static(f)


# ---------------------------------------------------------------------------------------------
# Files shared by runs and static files: identity, SAEs, Neuronpedia


class _Base:
    def __init__(self, root):
        self.file = root

    @property
    def heads(self):
        """The analysed heads, `L.H`, layer-major."""
        s = attr(self.file, "heads", "")
        return s.split(",") if s else []

    def sae(self, layer):
        """Attributes of the SAE serving heads of `layer` (group sae/blocks.L.hook_resid_pre), a dict."""
        g = self.file.get(f"sae/blocks.{int(layer)}.hook_resid_pre")
        return {} if g is None else {k: attr(g, k) for k in g.attrs}

    def neuronpedia(self, layer, feature):
        """Neuronpedia URL of a feature of the SAE serving `layer`'s heads; None for unknown releases."""
        s = self.sae(layer)
        return neuronpedia.url(neuronpedia.sae_id(s.get("hook_name"), s.get("d_sae")), feature)

    def __repr__(self):
        return f"<qkscope {attr(self.file, 'format')} {self.file.filename}: heads {attr(self.file, 'heads')}>"


# ---------------------------------------------------------------------------------------------
# Runs


@dataclass
class Pair:
    rank: int
    f: int          # query feature
    g: int          # key feature
    weight: float   # summed |term| (upper bound; see weight_err)
    weight_err: float
    sum: float      # summed signed term, score units
    count: int
    f_url: str = None
    g_url: str = None
    examples: list = field(default_factory=list)

    @property
    def mean(self):
        return self.sum / self.count if self.count else float("nan")


@dataclass
class Example:
    window: int
    query_pos: int
    key_pos: int
    term: float
    query_token: str
    key_token: str
    text: str       # the window up to the query, key in [[ ]], query in << >>

    def __str__(self):
        return f"w{self.window} q{self.query_pos} k{self.key_pos} term {self.term:+.4g}: {self.text}"


class Table(list):
    """A list of rows that prints as an aligned table in a notebook."""

    def __init__(self, rows, columns):
        super().__init__(rows)
        self.columns = columns

    def __repr__(self):
        cells = [[str(c) for c in self.columns]] + [[_fmt(getattr(r, c)) for c in self.columns] for r in self]
        widths = [max(len(row[i]) for row in cells) for i in range(len(self.columns))]
        return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells)

    _repr_pretty_ = lambda self, p, cycle: p.text(repr(self))  # noqa: E731


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    return repr(v) if isinstance(v, str) else str(v)


@dataclass
class Metrics:
    names: list
    heads: list
    values: np.ndarray  # (heads, metrics) means over every valid query

    def __getitem__(self, metric):
        """One metric's column as {head: mean}."""
        c = self.names.index(metric)
        return {h: float(v) for h, v in zip(self.heads, self.values[:, c])}

    def head(self, name):
        return dict(zip(self.names, map(float, self.values[self.heads.index(name)])))

    def __repr__(self):
        shown = self.names[:8]
        out = ["head  " + " ".join(f"{m[:12]:>12}" for m in shown)]
        for h, row in zip(self.heads, self.values):
            out.append(f"{h:>5} " + " ".join(f"{v:12.4g}" for v in row[:len(shown)]))
        return "\n".join(out)


class _Windows:
    """Windows of one file, a merged file or consecutive shards, addressed by global window index."""

    def __init__(self, files):
        self.files = files
        self.starts = np.cumsum([0] + [f["tokens"].shape[0] for f in files])

    def __len__(self):
        return int(self.starts[-1])

    def locate(self, w):
        if not 0 <= w < len(self):
            raise IndexError(f"window {w} is outside [0, {len(self)})")
        s = int(np.searchsorted(self.starts, w, side="right") - 1)
        return self.files[s], int(w - self.starts[s])

    def row(self, name, w):
        f, r = self.locate(int(w))
        return f[name][r]

    def blocks(self, name):
        """(first global window, array) over every file, for scans."""
        for f, s in zip(self.files, self.starts):
            yield int(s), f[name]


class Run(_Base):
    """A `qkscope run` output: one file, a `qkscope merge` file, or a sharded folder."""

    def __init__(self, files, agg_file, vocab=None, folder=None):
        super().__init__(files[0])
        self.files, self.agg_file, self.folder = files, agg_file, folder
        self.windows = _Windows(files)
        self.vocab = find_vocab(files[0], vocab, attr(files[0], "config_path"), files[1:])
        self.metric_names = attr(agg_file["summary"], "metric_names").split(",")

    @classmethod
    def _from_folder(cls, p, vocab):
        man = json.loads((p / "manifest.json").read_text())
        if man.get("format") != "qkscope-run-shards":
            raise ValueError(f"{p}/manifest.json: format is {man.get('format')!r}, expected 'qkscope-run-shards'")
        if not man.get("shards"):
            raise ValueError(f"{p}/manifest.json: no complete shard yet")
        files = [h5py.File(p / s, "r") for s in man["shards"]]
        for f in files:
            _check(f, ("qkscope-run",))
        agg = None
        if man.get("aggregates"):
            agg = h5py.File(p / man["aggregates"], "r")
            _check(agg, ("qkscope-run-aggregates",))
        elif len(files) == 1:
            agg = files[0]
        run = cls(files, agg if agg is not None else files[0], vocab, folder=p)
        run._summed = agg is None  # aggregates summed here over the shards (see _agg)
        return run

    _summed = False

    @property
    def recorded_heads(self):
        s = attr(self.file, "recorded_heads", "")
        return s.split(",") if s else []

    @property
    def n_windows(self):
        return len(self.windows)

    def metrics(self):
        """Per-head means of every fidelity metric over the corpus (summary/metric_mean)."""
        if self._summed:
            heads = self.heads
            vals = np.array([self.head(h).metrics_array() for h in heads])
            return Metrics(self.metric_names, heads, vals)
        s = self.agg_file["summary"]
        heads = [f"{l}.{h}" for l, h in zip(s["head_layer"][:], s["head_index"][:])]
        return Metrics(self.metric_names, heads, s["metric_mean"][:])

    def head(self, name):
        name = str(name)
        if name not in self.heads:
            raise KeyError(f"head {name} was not analysed; analysed heads: {attr(self.file, 'heads')}")
        return Head(self, name)

    # --- text
    def tokens(self, window):
        return self.windows.row("tokens", window)

    def length(self, window):
        return int(self.windows.row("length", window))

    def token(self, window, pos):
        return self.vocab.token(self.tokens(window)[pos])

    def text(self, window, start=0, end=None, mark=None):
        """The window's text, tokens [start, end); mark {pos: (open, close)} wraps tokens."""
        ids = self.tokens(window)
        end = self.length(window) if end is None else end
        mark = mark or {}
        out, run_ids = [], []
        for p in range(start, end):
            if p in mark:
                out.append(self.vocab.text(run_ids))
                run_ids = []
                o, c = mark[p]
                out.append(o + self.vocab.token(ids[p]) + c)
            else:
                run_ids.append(ids[p])
        out.append(self.vocab.text(run_ids))
        return "".join(out)

    def snippet(self, window, i, j, before=8, gap=16):
        """Query i in << >> and key j in [[ ]] with `before` tokens before the key; a gap between
        them longer than `gap` tokens is elided with ' … '."""
        mark = {j: ("[[", "]]"), i: ("<<", ">>")} if i != j else {i: ("<<[[", "]]>>")}
        lo = max(0, j - before)
        head = "…" if lo else ""
        if i - j <= gap:
            return head + self.text(window, lo, i + 1, mark)
        return head + self.text(window, lo, j + 4, mark) + " … " + self.text(window, i - 6, i + 1, mark)

    def source(self, window):
        """(corpus file, document, token offset) of the window's first corpus token."""
        f, d, o = (int(x) for x in self.windows.row("provenance", window))
        files = attr(self.file, "corpus_files", "").split("\n")
        return files[f] if 0 <= f < len(files) else f, d, o


class Head:
    def __init__(self, run, name):
        self.run, self.name = run, name
        self.layer, self.index = _layer_head(name)

    def __repr__(self):
        return f"<qkscope head {self.name} of {self.run.file.filename}>"

    def _agg_groups(self):
        if self.run._summed:
            return [f[f"aggregates/{self.name}"] for f in self.run.files]
        return [self.run.agg_file[f"aggregates/{self.name}"]]

    def metrics_array(self):
        gs = self._agg_groups()
        s = sum(g["metric_sum"][:] for g in gs)
        n = sum(g["metric_count"][:] for g in gs)
        with np.errstate(invalid="ignore", divide="ignore"):
            return s / n

    def metrics(self):
        """{metric: mean over the corpus} for this head."""
        return dict(zip(self.run.metric_names, map(float, self.metrics_array())))

    def url(self, feature):
        return self.run.neuronpedia(self.layer, feature)

    def pairs(self, top=20, examples=0):
        """The heaviest (query feature f, key feature g) pairs at the most attended key, heaviest first.

        examples > 0 attaches that many Example rows to each pair (see examples()).
        A sharded folder without aggregates.h5 adds its shards' tables pair by pair: equal to
        `qkscope merge`'s while no shard's sketch was full (pairs_weight_err all 0); otherwise open
        the merged file for merge's exact space-saving table.
        """
        cols = ("pairs_query_feature", "pairs_key_feature", "pairs_weight", "pairs_weight_err", "pairs_sum", "pairs_count")
        acc = {}
        for g in self._agg_groups():
            for f_, g_, w, e, s, c in zip(*(g[c][:] for c in cols)):
                a = acc.setdefault((int(f_), int(g_)), [0.0, 0.0, 0.0, 0])
                a[0] += float(w); a[1] += float(e); a[2] += float(s); a[3] += int(c)
        # Heaviest first, ties: lower f, then g (the order qkscope writes).
        order = sorted(acc.items(), key=lambda kv: (-kv[1][0], kv[0][0], kv[0][1]))[:top]
        rows = []
        for r, ((f_, g_), (w, e, s, c)) in enumerate(order):
            p = Pair(r, f_, g_, w, e, s, c, self.url(f_), self.url(g_))
            if examples:
                p.examples = self.examples(f_, g_, top=examples)
            rows.append(p)
        return Table(rows, ["rank", "f", "g", "weight", "weight_err", "sum", "count", "mean"])

    def _records(self):
        if self.name not in self.run.recorded_heads:
            raise KeyError(f"head {self.name} has no per-token records; recorded heads: "
                           f"{attr(self.run.file, 'recorded_heads') or 'none'} (config key [analysis] record_heads)")
        return f"heads/{self.name}"

    def lookfor(self, window, pos):
        """One query token: its look-for (top / bottom) features, attended keys and their top pairs."""
        g = self._records()
        f, r = self.run.windows.locate(int(window))
        rec = f[g]
        tok = self.run.tokens(window)

        def feats(idx, val):
            idx, val = idx[r, pos], val[r, pos]
            keep = idx != _unused(idx)
            return [(int(a), float(b)) for a, b in zip(idx[keep], val[keep])]

        out = {
            "window": int(window), "pos": int(pos), "token": self.run.vocab.token(tok[pos]),
            "context": self.run.text(window, 0, pos + 1, {pos: ("<<", ">>")}),
            "top": feats(rec["lookfor_top_idx"], rec["lookfor_top_val"]),
            "bottom": feats(rec["lookfor_bottom_idx"], rec["lookfor_bottom_val"]),
            "metrics": dict(zip(self.run.metric_names, map(float, rec["metrics"][r, pos]))),
            "keys": [],
        }
        if "lookfor_encoder_idx" in rec:
            out["encoder"] = feats(rec["lookfor_encoder_idx"], rec["lookfor_encoder_val"])
        pq, pk, pv = rec["pair_query_feature"][r, pos], rec["pair_key_feature"][r, pos], rec["pair_value"][r, pos]
        for q, (j, a) in enumerate(zip(rec["attended_pos"][r, pos], rec["attended_weight"][r, pos])):
            if j < 0:
                continue
            keep = pq[q] != _unused(pq)
            out["keys"].append({
                "pos": int(j), "weight": float(a), "token": self.run.vocab.token(tok[j]),
                "pairs": [(int(a_), int(b_), float(v)) for a_, b_, v in zip(pq[q][keep], pk[q][keep], pv[q][keep])],
                "group_totals": rec["group_totals"][r, pos, q],
            })
        return out

    def examples(self, f, g, top=5, records=False):
        """The strongest occurrences of pair (f, g) at a query's most attended key, as Example rows.

        From the aggregates' example tables (`aggregates/L.H/examples_*`: at most
        `examples_per_pair` per pair, docs/FORMAT.md), else (older files) found in the per-token
        records of a recorded head; `records=True` forces the latter.  Order: |term| descending, then
        window, query position, key position (a total order, so shards give the same list).
        """
        found = None if records else self._stored_examples(f, g)
        if found is None:
            found = self._scan_records(f, g)
        found.sort(key=lambda t: (-abs(t[0]), t[1], t[2], t[3]))
        rows = []
        for term, w, i, j in found[:top]:
            tok = self.run.tokens(w)
            rows.append(Example(w, i, j, term, self.run.vocab.token(tok[i]), self.run.vocab.token(tok[j]),
                                self.run.snippet(w, i, j)))
        return Table(rows, ["window", "query_pos", "key_pos", "term", "query_token", "key_token", "text"])

    def _stored_examples(self, f, g):
        """(term, window, i, j) of pair (f, g) from every file's aggregates/L.H/examples_* (each
        shard holds its own; their windows are the run's corpus window indices: rebased to rows
        here), or None when the files have no example tables."""
        rows = []
        for start, fl in zip(self.run.windows.starts, self.run.files):
            a = fl[f"aggregates/{self.name}"]
            if "examples_window" not in a:
                return None
            per, cap = int(attr(a, "examples_per_pair")), int(attr(a, "examples_capacity"))
            rebase = int(start) - int(attr(fl, "first_window", 0))
            cols = [a[f"examples_{k}"][:] for k in ("term", "window", "query_pos", "key_pos", "query_feature", "key_feature")]
            rows += [(float(t), int(w) + rebase, int(i), int(j), int(f_), int(g_)) for t, w, i, j, f_, g_ in zip(*cols)]
        if len(self.run.files) > 1:  # each shard holds R of its windows: R of their union, as merge does
            rows.sort(key=lambda r: (-abs(np.float32(r[0])), r[1], r[2], r[3], r[4], r[5]))
            seen, kept = {}, []
            for r in rows:
                seen[r[4:]] = seen.get(r[4:], 0) + 1
                if seen[r[4:]] <= per:
                    kept.append(r)
            rows = kept[:cap]
        return [r[:4] for r in rows if r[4] == f and r[5] == g]

    def _scan_records(self, f, g):
        name = self._records()
        found = []
        for w0, f_ in ((s, fl) for s, fl in zip(self.run.windows.starts, self.run.files)):
            rec = f_[name]
            n = rec["pair_query_feature"].shape[0]
            length = f_["length"][:]
            for b in range(0, n, 256):  # blocks of windows: memory stays bounded on big runs
                pq = rec["pair_query_feature"][b:b + 256, :, 0, :]
                pk = rec["pair_key_feature"][b:b + 256, :, 0, :]
                hit = np.nonzero((pq == f) & (pk == g))
                if not len(hit[0]):
                    continue
                pv = rec["pair_value"][b:b + 256, :, 0, :]
                jpos = rec["attended_pos"][b:b + 256, :, 0]
                for wi, i, s in zip(*hit):
                    if i < length[b + wi]:
                        found.append((float(pv[wi, i, s]), int(w0 + b + wi), int(i), int(jpos[wi, i])))
        return found


# ---------------------------------------------------------------------------------------------
# Static files


class Static(_Base):
    """A `qkscope static` output: weights-only maps S[f, g] = Qd[f] . Kd[g] / sqrt(d_head)."""

    def head(self, name):
        name = str(name)
        if f"static/{name}" not in self.file:
            raise KeyError(f"head {name} has no static map; analysed heads: {attr(self.file, 'heads')}")
        return StaticHead(self, name)


class StaticHead:
    def __init__(self, static, name):
        self.static, self.name = static, name
        self.layer, self.index = _layer_head(name)
        self.g = static.file[f"static/{name}"]

    def _list(self, idx, val, top):
        keep = idx != _unused(idx)
        return [(int(a), float(b), self.static.neuronpedia(self.layer, a)) for a, b in zip(idx[keep][:top], val[keep][:top])]

    def q2k(self, f, top=None):
        """[(key feature g, S[f, g], url)] largest first: what query feature f looks for."""
        return self._list(self.g["q2k_idx"][f], self.g["q2k_val"][f], top)

    def k2q(self, g, top=None):
        """[(query feature f, S[f, g], url)] largest first: which query features look for key feature g."""
        return self._list(self.g["k2q_idx"][g], self.g["k2q_val"][g], top)

    def key_prior(self, top=None):
        """[(key feature g, bq' . Kd[g] / sqrt(d_head), url)]: attended whatever the query."""
        return self._list(self.g["key_prior_top_idx"][:], self.g["key_prior_top_val"][:], top)

    def strongest(self, top=10):
        """The `top` largest entries S[f, g] of the stored q2k lists: [(f, g, S)], largest first."""
        idx, val = self.g["q2k_idx"][:], self.g["q2k_val"][:]
        keep = idx != _unused(idx)
        f = np.nonzero(keep)[0]
        order = np.lexsort((idx[keep], f, -val[keep]))[:top]
        return [(int(f[o]), int(idx[keep][o]), float(val[keep][o])) for o in order]
