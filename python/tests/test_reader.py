"""The notebook reader (python/qkscope) against real qkscope outputs; run by `make test-python`.

Environment (all made by the Makefile from the synthetic planted demo):
  QK_RUN      a one-file run            QK_STATIC  the static maps of the same config
  QK_SHARDS   the same corpus as a sharded folder (manifest.json)
  QK_MERGED   `qkscope merge` of QK_SHARDS
  QK_PLANTED  planted.json              QKSCOPE    the qkscope binary
  QK_VOCAB    a GPT-2 BPE folder (encoder.json); its tests are skipped, saying so, when absent
Plain asserts, no pytest: each test_* function runs in order; any failure exits non-zero.
"""
import json
import os
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import h5py
import numpy as np

import qkscope
from qkscope import neuronpedia
from qkscope.vocab import Vocab, config_value

ENV = os.environ
RUN, STATIC = ENV["QK_RUN"], ENV["QK_STATIC"]
PLANTED = json.loads(Path(ENV["QK_PLANTED"]).read_text())


def planted_recorded(run):
    """Planted circuits on recorded heads (the demo config records them)."""
    out = [c for c in PLANTED["circuits"] if f"{c['layer']}.{c['head']}" in run.recorded_heads]
    assert out, "the demo config records no planted head: the tests below would check nothing"
    return out


def test_open_and_metrics():
    run = qkscope.open(RUN)
    assert isinstance(run, qkscope.Run)
    with h5py.File(RUN, "r") as f:
        assert run.heads == f.attrs["heads"].decode().split(",")
        assert sorted(run.recorded_heads) == sorted(f["heads"].keys())
        table = f["summary/metric_mean"][:]
        W = f["tokens"].shape[0]
    m = run.metrics()
    assert m.heads == run.heads and len(m.names) == 16 and m.names[0] == "kl_both"
    assert np.array_equal(m.values, table, equal_nan=True)
    for h, v in m["top1"].items():
        assert 0 <= v <= 1, (h, v)
    h0 = run.heads[0]
    assert run.head(h0).metrics()["top1"] == m.head(h0)["top1"]
    assert run.n_windows == W
    assert "top1" in repr(m)
    try:
        run.head("99.0")
        raise AssertionError("head 99.0 should not exist")
    except KeyError as e:
        assert "analysed heads" in str(e)


def test_pairs_find_planted():
    run = qkscope.open(RUN)
    for c in PLANTED["circuits"]:
        name = f"{c['layer']}.{c['head']}"
        pairs = run.head(name).pairs(top=5)
        assert len(pairs) >= 1
        assert (pairs[0].f, pairs[0].g) == (c["query_feature"], c["key_feature"]), (name, pairs[0])
        w = [p.weight for p in pairs]
        assert w == sorted(w, reverse=True)
        with h5py.File(RUN, "r") as f:
            g = f[f"aggregates/{name}"]
            assert pairs[0].weight == g["pairs_weight"][0] and pairs[0].count == g["pairs_count"][0]
        assert pairs[0].f_url is None  # the synthetic SAEs are no Neuronpedia release
        assert "weight" in repr(pairs)


def test_lookfor_matches_records():
    run = qkscope.open(RUN)
    name = run.recorded_heads[0]
    h = run.head(name)
    with h5py.File(RUN, "r") as f:
        rec = f[f"heads/{name}"]
        length = f["length"][:]
        w = int(np.argmax(length)); i = int(length[w]) - 1
        top = rec["lookfor_top_idx"][w, i]; topv = rec["lookfor_top_val"][w, i]
        att = rec["attended_pos"][w, i]
        tok = f["tokens"][w]
    q = h.lookfor(w, i)
    unused = np.iinfo(top.dtype).max
    assert [a for a, _ in q["top"]] == [int(x) for x in top if x != unused]
    assert np.allclose([b for _, b in q["top"]], topv[top != unused])
    assert [k["pos"] for k in q["keys"]] == [int(j) for j in att if j >= 0]
    assert all(k["pos"] <= i for k in q["keys"])
    for k in q["keys"]:
        assert abs(k["group_totals"].sum()) > 0
    if run.vocab.source is None:  # without a vocabulary the demo's tokens show as <id>
        assert q["token"] == f"<{int(tok[i])}>" and q["context"].endswith(f"<<<{int(tok[i])}>>>")
    else:
        assert q["token"] == run.vocab.token(tok[i]) and q["context"].endswith(f"<<{q['token']}>>")
        assert not q["token"].startswith("<") or tok[i] == 50256


def test_stored_examples():
    """aggregates/L.H/examples_*: sorted by the total order, at most examples_per_pair per pair, and
    for the planted pairs the same as the strongest occurrences found in the per-token records."""
    run = qkscope.open(RUN)
    with h5py.File(RUN, "r") as f:
        for name in run.heads:
            a = f[f"aggregates/{name}"]
            per = int(a.attrs["examples_per_pair"])
            t, w = a["examples_term"][:], a["examples_window"][:]
            i, j = a["examples_query_pos"][:], a["examples_key_pos"][:]
            fq, gk = a["examples_query_feature"][:], a["examples_key_feature"][:]
            assert 0 < len(t) <= int(a.attrs["examples_capacity"]), name
            key = list(zip(-np.abs(t), w, i, j, fq, gk))
            assert key == sorted(key), f"{name}: examples not in the total order"
            _, counts = np.unique(np.stack([fq, gk]), axis=1, return_counts=True)
            assert counts.max() <= per, name
            assert np.all((j <= i) & (j >= 0) & (w >= 0) & (w < run.n_windows)), name
    for c in planted_recorded(run):
        h = run.head(f"{c['layer']}.{c['head']}")
        stored = h.examples(c["query_feature"], c["key_feature"], top=100)
        scanned = h.examples(c["query_feature"], c["key_feature"], top=len(stored), records=True)
        assert len(stored) == int(h.run.file[f"aggregates/{h.name}"].attrs["examples_per_pair"])
        assert [(e.window, e.query_pos, e.key_pos, e.term) for e in stored] == \
               [(e.window, e.query_pos, e.key_pos, e.term) for e in scanned], h.name


def test_examples_of_planted_pair():
    run = qkscope.open(RUN)
    for c in planted_recorded(run):
        name = f"{c['layer']}.{c['head']}"
        ex = run.head(name).examples(c["query_feature"], c["key_feature"], top=6, records=True)
        assert len(ex) == 6, (name, len(ex))
        keys = [(-abs(e.term), e.window, e.query_pos, e.key_pos) for e in ex]
        assert keys == sorted(keys), "examples are not in the documented total order"
        with h5py.File(RUN, "r") as f:
            rec = f[f"heads/{name}"]
            for e in ex:
                assert 0 <= e.key_pos <= e.query_pos
                assert rec["attended_pos"][e.window, e.query_pos, 0] == e.key_pos
                pv = rec["pair_value"][e.window, e.query_pos, 0]
                assert np.float32(e.term) in pv
                assert "<<" in e.text and "[[" in e.text


def _shards():
    return json.loads((Path(ENV["QK_SHARDS"]) / "manifest.json").read_text())["shards"]


def test_sharded_and_merged_equal_one_file():
    one = qkscope.open(RUN)
    for path in (ENV["QK_SHARDS"], ENV["QK_MERGED"], ENV["QK_RANKS"], ENV["QK_RANKS_MERGED"]):
        other = qkscope.open(path)
        # The example tables: bit-identical (R of the whole corpus, docs/FORMAT.md), every head.
        for name in one.heads:
            for p in one.head(name).pairs(top=5):
                a = [(e.window, e.query_pos, e.key_pos, e.term) for e in one.head(name).examples(p.f, p.g, top=10)]
                b = [(e.window, e.query_pos, e.key_pos, e.term) for e in other.head(name).examples(p.f, p.g, top=10)]
                assert a == b, (path, name, p.f, p.g, a, b)
        assert other.n_windows == one.n_windows, path
        assert np.allclose(other.metrics().values, one.metrics().values, equal_nan=True, rtol=1e-12), path
        # A full sketch depends on where the stream was split (docs/FORMAT.md): compare the pairs
        # that never left any table (err 0 in the one file and in the other), at least the planted ones.
        checked = 0
        for name in one.heads:
            b = {(p.f, p.g): p for p in other.head(name).pairs(top=50)}
            for p in one.head(name).pairs(top=10):
                q = b.get((p.f, p.g))
                if p.weight_err == 0 and q is not None and q.weight_err == 0:
                    assert q.count == p.count and np.isclose(q.weight, p.weight, rtol=1e-9), (path, name, p, q)
                    checked += 1
        for c in PLANTED["circuits"]:
            top = other.head(f"{c['layer']}.{c['head']}").pairs(top=1)[0]
            assert (top.f, top.g) == (c["query_feature"], c["key_feature"]), (path, c)
        assert checked >= len(PLANTED["circuits"]), checked
        for c in planted_recorded(one):
            name = f"{c['layer']}.{c['head']}"
            a = one.head(name).examples(c["query_feature"], c["key_feature"], top=8)
            b = other.head(name).examples(c["query_feature"], c["key_feature"], top=8)
            assert [(e.window, e.query_pos, e.key_pos, e.term, e.text) for e in a] == \
                   [(e.window, e.query_pos, e.key_pos, e.term, e.text) for e in b], path
        w = one.n_windows - 1
        assert one.text(w) == other.text(w) and one.source(w) == other.source(w)
    if len(_shards()) < 2:
        raise AssertionError("QK_SHARDS has one shard: the shard test would check nothing")


def _pieces(path):
    with h5py.File(path, "r") as f:
        if "vocab" not in f:
            return None
        g = f["vocab"]
        ids, off, data = g["ids"][:], g["offsets"][:], g["bytes"][:].tobytes()
        return {int(i): data[off[n]:off[n + 1]] for n, i in enumerate(ids)}


def test_vocab_pieces_in_files():
    vocab = ENV.get("QK_VOCAB")
    if not vocab:
        print("  SKIP: no GPT-2 vocabulary (QK_VOCAB): the demo files store no pieces")
        assert _pieces(RUN) is None
        return
    enc = Vocab.from_path(vocab)
    one = _pieces(RUN)
    assert one is not None, f"{RUN}: no vocab/ group although the run had [corpus] vocab"
    with h5py.File(RUN, "r") as f:
        assert sorted(one) == sorted(set(np.unique(f["tokens"][:]).tolist())), "vocab/ids are not the file's token ids"
    assert all(enc.pieces[i] == b for i, b in one.items()), "vocab/ bytes differ from the tokenizer's"
    shards = [_pieces(Path(ENV["QK_SHARDS"]) / s) for s in _shards()]
    assert all(p is not None for p in shards) and all(len(p) < len(one) for p in shards), "every shard: its own ids"
    union = {}
    for p in shards:
        union.update(p)
    assert union == one and _pieces(ENV["QK_MERGED"]) == one, "merge must store the union of the shards' pieces"


def test_own_text_through_demo():
    """make demo + one command: the demo model (GPT-2 ids) on a user's .txt and .jsonl, read back as text."""
    vocab = ENV.get("QK_VOCAB")
    if not vocab:
        print("  SKIP: no GPT-2 vocabulary (QK_VOCAB)")
        return
    demo = Path(ENV["QK_PLANTED"]).parent
    text = "It was the best of times, it was the worst of times; café, naïve — 12 “quotes”.\n" * 6
    sets = [f"model.dir={demo}/model", f"sae.layer.0={demo}/sae/layer_0", f"sae.layer.1={demo}/sae/layer_1",
            f"corpus.vocab={demo}/vocab", "corpus.pack=false"]
    with tempfile.TemporaryDirectory() as d:
        for name, content in (("mine.txt", text), ("mine.jsonl", json.dumps({"text": text}) + "\n")):
            src = Path(d) / name
            src.write_text(content, encoding="utf-8")
            out = Path(d) / (name + ".h5")
            cmd = [ENV["QKSCOPE"], "run", "configs/demo.ini", "-q", "-o", str(out), "--set", f"corpus.paths={src}"]
            for s_ in sets:
                cmd += ["--set", s_]
            subprocess.run(cmd, check=True)
            run = qkscope.open(out)
            assert run.vocab.source.endswith("vocab/")
            # Windows cut anywhere (even inside a character): join the ids, then decode.
            ids = [t for w in range(run.n_windows) for t in run.tokens(w)[:run.length(w)].tolist()]
            got = run.vocab.text(ids)
            assert got in (text, text[:-1]), (name, got[-80:])  # the newline ending a document is not part of it
            h = run.head("1.3")
            assert len(h.pairs(top=3)) == 3 and "<<" in h.lookfor(0, 5)["context"]
    # Without corpus.vocab the error names the key to set.
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "x.txt"
        src.write_text("hello", encoding="utf-8")
        r = subprocess.run([ENV["QKSCOPE"], "run", "configs/demo.ini", "-q", "-o", str(Path(d) / "x.h5"),
                            "--set", f"corpus.paths={src}"] + sum((["--set", s_] for s_ in sets[:3]), []),
                           capture_output=True, text=True)
        assert r.returncode != 0 and "corpus.vocab" in r.stderr and "--vocab DIR" not in r.stderr.split(";")[0], r.stderr
        assert str(src) in r.stderr, r.stderr


def test_static():
    st = qkscope.open(STATIC)
    assert isinstance(st, qkscope.Static)
    for c in PLANTED["circuits"]:
        h = st.head(f"{c['layer']}.{c['head']}")
        q = h.q2k(c["query_feature"], top=3)
        assert q[0][0] == c["key_feature"] and q[0][1] >= q[1][1]
        k = h.k2q(c["key_feature"], top=3)
        assert k[0][0] == c["query_feature"]
        s = h.strongest(5)
        assert [v for _, _, v in s] == sorted((v for _, _, v in s), reverse=True)
        assert len(h.key_prior(4)) == 4


def test_neuronpedia():
    assert neuronpedia.sae_id("blocks.4.hook_resid_post", 32768) == "4-res_post_32k-oai"
    assert neuronpedia.url("4-res_post_32k-oai", 123) == "https://neuronpedia.org/gpt2-small/4-res_post_32k-oai/123"
    assert neuronpedia.sae_id("blocks.5.hook_resid_pre", 24576) == "5-res-jb"
    assert neuronpedia.sae_id("blocks.5.hook_resid_pre", 256) is None
    assert neuronpedia.sae_id("blocks.4.hook_resid_post", 131072) is None  # the 128k release has no dashboards here
    assert qkscope.open(RUN).neuronpedia(1, 3) is None


def test_config_value():
    text = "[corpus]\nvocab = a/b ; comment\npaths = x\n[model]\nvocab = no\n# --set corpus.vocab=/v\n"
    assert config_value(text, "corpus", "vocab") == "/v"
    assert config_value(text.rsplit("#", 1)[0], "corpus", "vocab") == "a/b"
    assert config_value(text, "corpus", "bos") is None


def test_vocab_roundtrip():
    vocab = ENV.get("QK_VOCAB")
    if not vocab or not (Path(vocab) / "encoder.json").exists():
        print("  SKIP: no GPT-2 vocabulary (QK_VOCAB)")
        return
    text = "Héllo, wörld!  The café's 12345 — I’m x² a\u00a0b\n"
    ids = subprocess.run([ENV["QKSCOPE"], "tokenize", "--vocab", vocab], input=text.encode(), capture_output=True,
                         check=True).stdout.split()
    v = Vocab.from_path(vocab)
    assert v.text(int(i) for i in ids) == text
    assert v.token(50256) == "<|endoftext|>" and v.token(10_000_000) == "<10000000>"


def test_errors_are_clear():
    with tempfile.TemporaryDirectory() as d:
        try:
            qkscope.open(d)
            raise AssertionError("an empty folder opened")
        except ValueError as e:
            assert "manifest.json" in str(e)
        p = Path(d) / "x.h5"
        with h5py.File(p, "w") as f:
            f.attrs["format"] = np.bytes_("qkscope-run")
        try:
            qkscope.open(p)
            raise AssertionError("an incomplete file opened")
        except ValueError as e:
            assert "not complete" in str(e)


if __name__ == "__main__":
    failed = 0
    for name, fn in list(globals().items()):
        if name.startswith("test_") and callable(fn):
            try:
                fn()
                print(f"ok   {name}")
            except Exception:
                failed += 1
                print(f"FAIL {name}")
                traceback.print_exc()
    sys.exit(1 if failed else 0)
