"""Float64 reference for the feature-space attention analysis (docs/ANALYSIS.md), for the C tests.

Independent of qkscope: the inputs are TransformerLens's cache of the tiny GPT-2 model
(tests/reference/data/gpt2_tiny_a/cache.safetensors), the Hugging Face weights of that model
(model.safetensors) and SAELens's own SAE classes (SAE.load_from_disk, float64, its encode /
decode).  Everything is computed in float64 and stored as float32 (plus a few float64 copies).

Run from the repo root:  .venv-ref/bin/python tests/reference/make_analysis_ref.py
Writes tests/reference/data/analysis_tiny_a/ref.safetensors; the tensor names, shapes and
meanings are listed in tests/reference/data/analysis_tiny_a/README.md.

Section numbers (§) refer to docs/ANALYSIS.md unless marked SPEC (shared/SPEC.md).
"""

import importlib.metadata
import json
import math
import os

import torch
from safetensors.torch import load_file, save
from sae_lens import SAE

MODEL_DIR = "tests/reference/data/gpt2_tiny_a"
SAE_DIR = "tests/reference/data/sae"
OUT_DIR = "tests/reference/data/analysis_tiny_a"

# The SAE that serves each layer; it codes blocks.{L}.hook_resid_pre (ANALYSIS §1, SPEC §3).
SAE_FOR_LAYER = {0: "standard_none_bdec", 1: "topk_ln_bdec"}
K_LOOKFOR = 8   # k: look-for features (§3), overlap@k (§4), weights-only maps (§6)
A_KEYS = 2      # a: attended keys per query (§2)
P_PAIRS = 5     # p: feature pairs per (query, attended key) (§2)
ENC_SLOTS_RELU = 16  # slots for the encoder projection of a ReLU (non-top-k) SAE
GROUPS = ("F", "B", "E", "A")  # component groups, in this order on both axes (§2)

METRICS = ("kl_both", "kl_query", "kl_key", "top1", "r2", "error_share", "overlap",
           "overlap_chance")

F64 = torch.float64
INF = math.inf


# ----------------------------------------------------------------------------------------------
# Generic helpers
# ----------------------------------------------------------------------------------------------

def sorted_topk(values, k, largest=True):
    """Top-k along the last axis, ties to the lower index, plus the gap to the (k+1)-th.

    Returns (idx int64 [..., k], val [..., k], gap [...]).  gap = |v_k - v_{k+1}| (inf when the
    axis has only k entries).  Entries equal to -inf (largest) / +inf (smallest) count as absent:
    their slots get index -1 and value 0, and a gap with an absent neighbour is inf.
    """
    order = torch.sort(values, dim=-1, descending=largest, stable=True)
    idx = order.indices[..., :k].clone()
    val = order.values[..., :k].clone()
    absent_value = -INF if largest else INF
    absent = val == absent_value
    idx[absent] = -1
    val[absent] = 0.0
    if values.shape[-1] > k:
        kth, nxt = order.values[..., k - 1], order.values[..., k]
        gap = (kth - nxt).abs()
        gap[(kth == absent_value) | (nxt == absent_value)] = INF
    else:
        gap = torch.full(values.shape[:-1], INF, dtype=F64)
    return idx, val, gap


def causal_mask(T):
    """[T, T] boolean, True where key j <= query i."""
    return torch.ones(T, T, dtype=torch.bool).tril()


# ----------------------------------------------------------------------------------------------
# Inputs (§1)
# ----------------------------------------------------------------------------------------------

def load_inputs():
    """TransformerLens's cache (float32 on disk, float64 here), the HF weights and config."""
    cache = {k: v.to(F64) if v.is_floating_point() else v
             for k, v in load_file(os.path.join(MODEL_DIR, "cache.safetensors")).items()}
    weights = {k: v.to(F64) for k, v in load_file(os.path.join(MODEL_DIR, "model.safetensors")).items()}
    with open(os.path.join(MODEL_DIR, "config.json")) as f:
        config = json.load(f)
    return cache, weights, config


def fold_head(weights, layer, head, n_embd, n_head):
    """SPEC §2: LN-folded, centred query/key maps of one head.

    HF GPT-2 stores c_attn as a Conv1D, x @ W + b with W [C, 3C] = [Q | K | V], head h in
    columns h*dh:(h+1)*dh of each block.  Wq' = diag(g) Wq, bq' = b Wq + bq, Wq~ = P Wq'
    (each column's mean over C subtracted).  Returns Wq~, Wk~ [C, dh] and bq', bk' [dh].
    """
    dh = n_embd // n_head
    g = weights[f"h.{layer}.ln_1.weight"]
    b = weights[f"h.{layer}.ln_1.bias"]
    W = weights[f"h.{layer}.attn.c_attn.weight"]
    bias = weights[f"h.{layer}.attn.c_attn.bias"]
    cols_q = slice(head * dh, (head + 1) * dh)
    cols_k = slice(n_embd + head * dh, n_embd + (head + 1) * dh)
    out = {}
    for name, cols in (("q", cols_q), ("k", cols_k)):
        Wp = g[:, None] * W[:, cols]
        out["W" + name] = Wp - Wp.mean(dim=0, keepdim=True)
        out["b" + name] = b @ W[:, cols] + bias[cols]
    return out


def head_tables(fold, sae):
    """§1: Qd = W_dec Wq~, Kd = W_dec Wk~ [m, dh]; qb = b_dec Wq~, kb = b_dec Wk~ [dh]."""
    return {"Qd": sae.W_dec @ fold["Wq"], "Kd": sae.W_dec @ fold["Wk"],
            "qb": sae.b_dec @ fold["Wq"], "kb": sae.b_dec @ fold["Wk"]}


def load_sae(name):
    return SAE.load_from_disk(os.path.join(SAE_DIR, name), dtype="float64")


def sae_codes(sae, x):
    """§1: SAELens's codes of the raw residual x [B, T, C] and its reconstruction.

    acts [B, T, m] = SAE.encode(x); for `layer_norm` SAEs the decode scale r and shift mu are the
    ln_std / ln_mu SAELens stores during encode (std_unbiased without eps, mean); otherwise r = 1,
    mu = 0.  xhat = SAE.decode(acts) (which is r (acts W_dec + b_dec) + mu), err = x - xhat.
    """
    acts = sae.encode(x)
    if sae.cfg.normalize_activations == "layer_norm":
        r, mu = sae.ln_std[..., 0].clone(), sae.ln_mu[..., 0].clone()
    else:
        assert sae.cfg.normalize_activations == "none", sae.cfg.normalize_activations
        r, mu = torch.ones(x.shape[:-1], dtype=F64), torch.zeros(x.shape[:-1], dtype=F64)
    xhat = sae.decode(acts)
    manual = r[..., None] * (acts @ sae.W_dec + sae.b_dec) + mu[..., None]
    assert torch.allclose(xhat, manual, rtol=0, atol=1e-12), "decode != r (a W_dec + b_dec) + mu"
    return {"acts": acts, "r": r, "mu": mu, "xhat": xhat, "err": x - xhat}


def sae_kind(sae):
    """'topk' with its k, or 'relu' for a standard SAE (the two used here)."""
    k = getattr(sae.cfg, "k", None)
    return ("topk", int(k)) if k is not None else ("relu", None)


# ----------------------------------------------------------------------------------------------
# §2: components and the exact decomposition
# ----------------------------------------------------------------------------------------------

def components(codes, sigma, d_tab, b_tab, W_tilde, b_attn):
    """§2: every component of the query (or key) of every token, as rows in R^dh.

    Returns [B, T, m + 3, dh]: rows 0..m-1 the feature components a_f (r/sigma) Qd[f] (zero for
    inactive f), row m the decoder-bias component (r/sigma) qb, row m+1 the SAE-error component
    e Wq~ / sigma, row m+2 the attention bias bq'.  (mu 1 Wq~ = 0: Wq~ is centred.)
    """
    scale = codes["r"] / sigma                                   # [B, T]
    feat = (codes["acts"] * scale[..., None])[..., None] * d_tab  # [B, T, m, dh]
    bias = scale[..., None] * b_tab                               # [B, T, dh]
    err = (codes["err"] @ W_tilde) / sigma[..., None]             # [B, T, dh]
    attn = b_attn.expand_as(err)
    return torch.cat([feat, bias[..., None, :], err[..., None, :], attn[..., None, :]], dim=-2)


def group_slices(m):
    return [slice(0, m), slice(m, m + 1), slice(m + 1, m + 2), slice(m + 2, m + 3)]


def attended_keys(A, a):
    """§2: the a keys j <= i with the largest A_ij (ties lower j); -1 / 0 in unused slots.

    A [B, T, T] (hook_pattern of one head).  Returns idx [B, T, a], weight [B, T, a] and gap
    [B, T] = A_(a) - A_(a+1) (inf if fewer than a + 1 keys).
    """
    T = A.shape[-1]
    masked = A.masked_fill(~causal_mask(T), -INF)
    return sorted_topk(masked, a)


def decompose(cq, ck, active, att_idx, dh, p):
    """§2: every term of every (query i, key j <= i) pair, summed per group, and top-p pairs.

    cq, ck [B, T, m+3, dh] components; active [B, T, m] bool (a_f > 0); att_idx [B, T, a].
    Each term is computed explicitly (component . component / sqrt(dh)), then summed.

    Returns term_sum [B, T, T] (NaN above the diagonal), groups_all [B, T, T, 4, 4] (NaN above
    the diagonal), and at the attended keys: pairs_f, pairs_g [B, T, a, p] (-1 padded),
    pairs_val [B, T, a, p] (0 padded), pairs_gap [B, T, a] (|v_p| - |v_{p+1}|, inf if at most
    p pairs), pairs_count [B, T, a] (|F(i)| |F(j*)|).
    """
    B, T, n, _ = cq.shape
    m = n - 3
    a = att_idx.shape[-1]
    sl = group_slices(m)
    term_sum = torch.full((B, T, T), math.nan, dtype=F64)
    groups_all = torch.full((B, T, T, 4, 4), math.nan, dtype=F64)
    pairs_f = torch.full((B, T, a, p), -1, dtype=torch.int64)
    pairs_g = torch.full((B, T, a, p), -1, dtype=torch.int64)
    pairs_val = torch.zeros((B, T, a, p), dtype=F64)
    pairs_gap = torch.full((B, T, a), INF, dtype=F64)
    pairs_count = torch.zeros((B, T, a), dtype=torch.int64)
    # flat index f * m + g enumerates pairs f-major: a stable sort keeps lower f, then lower g
    f_of = torch.arange(m * m) // m
    g_of = torch.arange(m * m) % m
    for b in range(B):
        for i in range(T):
            terms = torch.einsum("qd,jkd->jqk", cq[b, i], ck[b, : i + 1]) / math.sqrt(dh)
            term_sum[b, i, : i + 1] = terms.sum(dim=(1, 2))
            for al in range(4):
                for be in range(4):
                    groups_all[b, i, : i + 1, al, be] = terms[:, sl[al], sl[be]].sum(dim=(1, 2))
            for s in range(a):
                j = int(att_idx[b, i, s])
                if j < 0:
                    continue
                ff = terms[j, :m, :m].reshape(-1)
                valid = (active[b, i][:, None] & active[b, j][None, :]).reshape(-1)
                key = torch.where(valid, ff.abs(), torch.full_like(ff, -INF))
                order = torch.sort(key, descending=True, stable=True).indices
                count = int(valid.sum())
                pairs_count[b, i, s] = count
                take = order[: min(p, count)]
                pairs_f[b, i, s, : len(take)] = f_of[take]
                pairs_g[b, i, s, : len(take)] = g_of[take]
                pairs_val[b, i, s, : len(take)] = ff[take]
                if count > p:
                    pairs_gap[b, i, s] = ff[order[p - 1]].abs() - ff[order[p]].abs()
    return {"term_sum": term_sum, "groups_all": groups_all, "pairs_f": pairs_f,
            "pairs_g": pairs_g, "pairs_val": pairs_val, "pairs_gap": pairs_gap,
            "pairs_count": pairs_count}


def groups_at(groups_all, att_idx):
    """The 4x4 group totals at each attended key: [B, T, a, 4, 4], zero for unused slots."""
    B, T, a = att_idx.shape
    out = torch.zeros((B, T, a, 4, 4), dtype=F64)
    for b in range(B):
        for i in range(T):
            for s in range(a):
                j = int(att_idx[b, i, s])
                if j >= 0:
                    out[b, i, s] = groups_all[b, i, j]
    return out


# ----------------------------------------------------------------------------------------------
# §3: look-for features
# ----------------------------------------------------------------------------------------------

def lookfor_decoder(q, Kd, dh, k):
    """§3 decoder projection: u_i = q_i . Kd[g] / sqrt(dh); top-k (largest first) and bottom-k
    (smallest first), ties to the lower index.  q [B, T, dh] is TL's hook_q of the head."""
    u = q @ Kd.T / math.sqrt(dh)
    top = sorted_topk(u, k, largest=True)
    bot = sorted_topk(u, k, largest=False)
    return u, top, bot


def lookfor_encoder(q, Wk, sae, dh):
    """§3 encoder projection, the straightforward way: form v_i = q_i Wk~^T / sqrt(dh) in R^C
    explicitly and call SAELens's encode on it (its normalisation, b_dec, activation).

    Returns idx [B, T, S], val [B, T, S] (active features by value desc, ties lower index, -1/0
    padded; S = the SAE's k for top-k SAEs, ENC_SLOTS_RELU otherwise), count [B, T] (number of
    active features, may exceed S for ReLU), gap [B, T] (see enc_gap), and the pre-activations.
    """
    v = q @ Wk.T / math.sqrt(dh)
    acts = sae.encode(v)
    _, cache = sae.run_with_cache(v)
    pre = cache["hook_sae_acts_pre"]
    kind, k = sae_kind(sae)
    slots = k if kind == "topk" else ENC_SLOTS_RELU
    masked = torch.where(acts > 0, acts, torch.full_like(acts, -INF))
    idx, val, list_gap = sorted_topk(masked, slots)
    count = (acts > 0).sum(dim=-1)
    gap = enc_gap(pre, list_gap, kind, k)
    return {"v": v, "idx": idx, "val": val, "count": count, "gap": gap, "pre": pre, "acts": acts}


def enc_gap(pre, list_gap, kind, k):
    """Distance of the encoder-projection list from a decision boundary (for excusing near-ties).

    min of: the gap between the last stored value and the next active value (when the list is
    truncated; inf otherwise); for ReLU: min_g |pre_g| (a feature on the verge of switching on or
    off); for top-k: pre_(k) - pre_(k+1) (the top-k selection margin) and min |pre_g| over the
    top-k (the ReLU applied after the selection).
    """
    if kind == "relu":
        boundary = pre.abs().min(dim=-1).values
    else:
        top = torch.sort(pre, dim=-1, descending=True, stable=True).values
        boundary = torch.minimum(top[..., k - 1] - top[..., k], top[..., :k].abs().min(dim=-1).values)
    return torch.minimum(list_gap, boundary)


# ----------------------------------------------------------------------------------------------
# §4: fidelity metrics
# ----------------------------------------------------------------------------------------------

def kl_row(A, s_hat):
    """KL(A || softmax(s_hat)) in nats; terms with A_j = 0 are 0.  A is a distribution."""
    log_hat = torch.log_softmax(s_hat, dim=-1)
    pos = A > 0
    return float((A[pos] * (torch.log(A[pos]) - log_hat[pos])).sum())


def r2_row(s, s_hat):
    """1 - sum (s - s_hat)^2 / sum (s - mean s)^2; NaN for fewer than 2 keys or a 0 denominator."""
    if s.numel() < 2:
        return math.nan
    den = float(((s - s.mean()) ** 2).sum())
    if den == 0.0:
        return math.nan
    return 1.0 - float(((s - s_hat) ** 2).sum()) / den


def error_share(G):
    """§4: sum |G| over groups with alpha = E or beta = E over sum |G| over all groups, both
    leaving out column beta = A.  G [4, 4] group totals (abs of each group TOTAL)."""
    E, Acol = GROUPS.index("E"), GROUPS.index("A")
    absG = G.abs().clone()
    absG[:, Acol] = 0.0
    den = float(absG.sum())
    if den == 0.0:
        return math.nan
    num = float(absG[E, :].sum() + absG[:, E].sum() - absG[E, E])
    return num / den


def overlap_with(look, active_j):
    """|look ∩ F(j)| / |F(j)|, NaN if F(j) is empty.  look: set of feature ids."""
    feats = torch.nonzero(active_j).flatten().tolist()
    if not feats:
        return math.nan
    return len(look.intersection(feats)) / len(feats)


def metrics(s, A, q, k, eq, ek, groups_all, active, top_idx, dh):
    """§4, every metric with and without key 0, per (window, query): dict name -> [B, T].

    s = hook_attn_scores, A = hook_pattern, q/k = hook_q/hook_k of the head (float64),
    eq/ek = e Wq~/sigma, e Wk~/sigma.  qhat = q - eq, khat = k - ek.  A is renormalised over the
    key set J (a no-op up to float32 rounding for the full set 0..i).
    """
    B, T, _ = q.shape
    qhat, khat = q - eq, k - ek
    sq = math.sqrt(dh)
    shat = {"both": qhat @ khat.transpose(1, 2) / sq,
            "query": qhat @ k.transpose(1, 2) / sq,
            "key": q @ khat.transpose(1, 2) / sq}
    out = {f"{name}{suffix}": torch.full((B, T), math.nan, dtype=F64)
           for name in METRICS + ("r2_den",) for suffix in ("", "_nosink")}
    for b in range(B):
        for i in range(T):
            look = set(top_idx[b, i].tolist())
            for suffix, first in (("", 0), ("_nosink", 1)):
                if i < first:
                    continue
                J = torch.arange(first, i + 1)
                A_J = A[b, i, J] / A[b, i, J].sum()
                for side in ("both", "query", "key"):
                    out[f"kl_{side}{suffix}"][b, i] = kl_row(A_J, shat[side][b, i, J])
                j_star = int(J[torch.argmax(A_J)])  # argmax returns the first maximum: lower j
                j_hat = int(J[torch.argmax(shat["both"][b, i, J])])  # argmax Ahat == argmax shat
                out[f"top1{suffix}"][b, i] = float(j_hat == j_star)
                out[f"r2{suffix}"][b, i] = r2_row(s[b, i, J], shat["both"][b, i, J])
                out[f"r2_den{suffix}"][b, i] = float(((s[b, i, J] - s[b, i, J].mean()) ** 2).sum())
                out[f"error_share{suffix}"][b, i] = error_share(groups_all[b, i, j_star])
                out[f"overlap{suffix}"][b, i] = overlap_with(look, active[b, j_star])
                per_key = [overlap_with(look, active[b, j]) for j in J.tolist() if active[b, j].any()]
                out[f"overlap_chance{suffix}"][b, i] = (sum(per_key) / len(per_key)
                                                        if per_key else math.nan)
    return out, shat


def top1_margin(A, shat_both):
    """Smallest of the top-1 vs top-2 gaps of A_i and of shat_i over j <= i (inf for i = 0):
    rows below ~1e-5 may flip `top1` under float rounding.  [B, T], and the same over j >= 1."""
    T = A.shape[-1]
    mask = causal_mask(T)
    res = []
    for first in (0, 1):
        m = mask.clone()
        m[:, :first] = False
        gaps = []
        for X in (A, shat_both):
            _, _, g = sorted_topk(X.masked_fill(~m, -INF), 1)
            gaps.append(g)
        res.append(torch.minimum(*gaps))
    return res


# ----------------------------------------------------------------------------------------------
# §6: weights-only maps
# ----------------------------------------------------------------------------------------------

def weight_maps(Qd, Kd, bq, dh, k):
    """§6: S[f, g] = Qd[f] . Kd[g] / sqrt(dh); q2k = top-k g per f; k2q = top-k f per g;
    key_prior[g] = bq' . Kd[g] / sqrt(dh) and its top-k.  (Materialised here: m = 200.)"""
    S = Qd @ Kd.T / math.sqrt(dh)
    prior = Kd @ bq / math.sqrt(dh)
    return {"q2k": sorted_topk(S, k), "k2q": sorted_topk(S.T, k), "key_prior": prior,
            "key_prior_top": sorted_topk(prior, k)}


# ----------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------

def save_deterministic(tensors, path, metadata):
    """safetensors.save_file, but with the JSON header's keys sorted: safetensors writes the
    metadata map in hash order, so the same data would give different bytes on every run."""
    blob = save(tensors, metadata=metadata)
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text + blob[8 + n:])
    assert load_file(path).keys() == tensors.keys()


def f32(x):
    return x.to(torch.float32).contiguous()


def i32(x):
    return x.to(torch.int32).contiguous()


def analyse_head(layer, head, cache, fold, tab, sae, codes, sigma, dh, out, checks):
    """All per-head quantities of one head into `out` (names `{L}.{H}.{quantity}`)."""
    pre = f"{layer}.{head}."
    x = cache[f"blocks.{layer}.hook_resid_pre"]
    q = cache[f"blocks.{layer}.attn.hook_q"][:, :, head]
    k = cache[f"blocks.{layer}.attn.hook_k"][:, :, head]
    s = cache[f"blocks.{layer}.attn.hook_attn_scores"][:, head]
    A = cache[f"blocks.{layer}.attn.hook_pattern"][:, head]
    active = codes["acts"] > 0

    # folded weights and per-head tables (SPEC §2, §1)
    out[pre + "Wq"], out[pre + "Wk"] = f32(fold["Wq"]), f32(fold["Wk"])
    out[pre + "bq"], out[pre + "bk"] = f32(fold["bq"]), f32(fold["bk"])
    for name in ("Qd", "Kd", "qb", "kb"):
        out[pre + name] = f32(tab[name])

    # §3 look-for features
    _, top, bot = lookfor_decoder(q, tab["Kd"], dh, K_LOOKFOR)
    for tag, (idx, val, gap) in (("top", top), ("bot", bot)):
        out[pre + f"lookfor_dec_{tag}_idx"] = i32(idx)
        out[pre + f"lookfor_dec_{tag}_val"] = f32(val)
        out[pre + f"lookfor_dec_{tag}_gap"] = f32(gap)
    enc = lookfor_encoder(q, fold["Wk"], sae, dh)
    out[pre + "lookfor_enc_idx"] = i32(enc["idx"])
    out[pre + "lookfor_enc_val"] = f32(enc["val"])
    out[pre + "lookfor_enc_count"] = i32(enc["count"])
    out[pre + "lookfor_enc_gap"] = f32(enc["gap"])

    # §2 attended keys and the decomposition
    att_idx, att_w, att_gap = attended_keys(A, A_KEYS)
    out[pre + "attn_idx"], out[pre + "attn_w"], out[pre + "attn_gap"] = i32(att_idx), f32(att_w), f32(att_gap)
    cq = components(codes, sigma, tab["Qd"], tab["qb"], fold["Wq"], fold["bq"])
    ck = components(codes, sigma, tab["Kd"], tab["kb"], fold["Wk"], fold["bk"])
    dec = decompose(cq, ck, active, att_idx, dh, P_PAIRS)
    for name in ("pairs_f", "pairs_g", "pairs_count"):
        out[pre + name] = i32(dec[name])
    out[pre + "pairs_val"], out[pre + "pairs_gap"] = f32(dec["pairs_val"]), f32(dec["pairs_gap"])
    G = groups_at(dec["groups_all"], att_idx)
    out[pre + "groups"], out[pre + "groups_f64"] = f32(G), G.contiguous()
    out[pre + "term_sum"], out[pre + "term_sum_f64"] = f32(dec["term_sum"]), dec["term_sum"].contiguous()

    # §4 metrics
    eq = codes["err"] @ fold["Wq"] / sigma[..., None]
    ek = codes["err"] @ fold["Wk"] / sigma[..., None]
    mets, shat = metrics(s, A, q, k, eq, ek, dec["groups_all"], active, top[0], dh)
    for name, val in mets.items():
        if name.startswith("r2_den"):  # r2{,_nosink}_den: the R^2 denominator, for the C test
            out[pre + name.replace("r2_den", "r2") + "_den"] = f32(val)
            continue
        out[pre + name] = f32(val)
        out[pre + "mean." + name] = f32(torch.nanmean(val).reshape(1))
    margin, margin_nosink = top1_margin(A, shat["both"])
    out[pre + "top1_gap"], out[pre + "top1_nosink_gap"] = f32(margin), f32(margin_nosink)

    # §6 weights-only maps
    wm = weight_maps(tab["Qd"], tab["Kd"], fold["bq"], dh, K_LOOKFOR)
    for name in ("q2k", "k2q", "key_prior_top"):
        idx, val, gap = wm[name]
        out[pre + name + "_idx"], out[pre + name + "_val"] = i32(idx), f32(val)
        out[pre + name + "_gap"] = f32(gap.reshape(-1))
    out[pre + "key_prior"] = f32(wm["key_prior"])

    checks.append(invariants(layer, head, x, sigma, q, k, s, A, fold, dec["term_sum"],
                             dec["groups_all"], enc, mets, dh))


def invariants(layer, head, x, sigma, q, k, s, A, fold, term_sum, groups_all, enc, mets, dh):
    """§2's invariant and the float32 provenance of TL's scores, measured (asserted in sanity)."""
    sq = math.sqrt(dh)
    q64 = x @ fold["Wq"] / sigma[..., None] + fold["bq"]
    k64 = x @ fold["Wk"] / sigma[..., None] + fold["bk"]
    s64 = q64 @ k64.transpose(1, 2) / sq
    s_tlqk = q @ k.transpose(1, 2) / sq
    ts = term_sum
    lower = causal_mask(s.shape[-1]).expand_as(s)
    natural = (q64.norm(dim=-1)[:, :, None] * k64.norm(dim=-1)[:, None, :]) / sq
    scale_row = s.masked_fill(~lower, 0).abs().amax(dim=-1, keepdim=True).clamp_min(1e-30)
    return {
        "head": f"{layer}.{head}",
        # exactness of the decomposition: term sum vs float64 bilinear form of the same inputs
        "ts_vs_s64_rel": float(((ts - s64).abs() / scale_row)[lower].max()),
        # groups sum to the term sum
        "groups_vs_ts": float((groups_all.sum(dim=(-1, -2)) - ts)[lower].abs().max()),
        # term sum vs TL's float32 scores, element-wise relative and relative to the row's max |s|
        "ts_vs_tl_elem_rel": float(((ts - s).abs() / s.abs().clamp_min(1e-30))[lower].max()),
        "ts_vs_tl_row_rel": float(((ts - s).abs() / scale_row)[lower].max()),
        "ts_tl_match_1e9": int((((ts - s).abs() <= 1e-9 * s.abs()) & lower).sum()),
        # the same relative to the natural float error scale of a dot product, |q_i| |k_j| / sqrt(dh)
        "ts_vs_tl_qk_rel": float(((ts - s).abs() / natural)[lower].max()),
        "tl32_vs_tl_qk_rel": float(((tl_float32_scores(layer, head, dh) - s).abs() / natural)[lower].max()),
        "n_scores": int(lower.sum()),
        # what TL's float32 arithmetic alone does: its scores vs float64 q.k of its own q, k
        "tl_vs_tlqk64_row_rel": float(((s - s_tlqk).abs() / scale_row)[lower].max()),
        "q64_vs_hookq_rel": float(((q64 - q).abs().amax() / q.abs().amax())),
        "pattern_vs_softmax64": float((A - torch.softmax(s.masked_fill(~lower, -INF), -1)).abs().max()),
        "enc_count_max": int(enc["count"].max()),
        "mean_kl_both": float(torch.nanmean(mets["kl_both"])),
    }


def tl_float32_scores(layer, head, dh):
    """TransformerLens's own path in float32 (LN with the cached hook_scale, then W_Q / W_K, then
    q.k / sqrt(dh)), from the float32 cache and weights: reproduces hook_attn_scores (to float32
    rounding; bit-exactly on the machine that made the committed data).  Used only to show that
    term_sum's distance from hook_attn_scores is TL's float32 rounding, not the decomposition."""
    raw = load_file(os.path.join(MODEL_DIR, "cache.safetensors"))
    w = load_file(os.path.join(MODEL_DIR, "model.safetensors"))
    x, sc = raw[f"blocks.{layer}.hook_resid_pre"], raw[f"blocks.{layer}.ln1.hook_scale"]
    C = x.shape[-1]
    xn = (x - x.mean(-1, keepdim=True)) / sc * w[f"h.{layer}.ln_1.weight"] + w[f"h.{layer}.ln_1.bias"]
    W, b = w[f"h.{layer}.attn.c_attn.weight"], w[f"h.{layer}.attn.c_attn.bias"]
    q = xn @ W[:, head * dh:(head + 1) * dh] + b[head * dh:(head + 1) * dh]
    k = xn @ W[:, C + head * dh:C + (head + 1) * dh] + b[C + head * dh:C + (head + 1) * dh]
    return (q @ k.transpose(1, 2) / math.sqrt(dh)).to(F64)


def sanity(out, checks):
    """Range checks of ANALYSIS §4 metrics and the §2 invariants; raises on failure."""
    for c in checks:
        assert c["ts_vs_s64_rel"] < 1e-12, c
        assert c["groups_vs_ts"] < 1e-12, c
        # TL's scores are float32 arithmetic: term_sum matches them to float32 rounding of the
        # dot product (a few ulps of |q| |k| / sqrt(dh)), not to 1e-9 (see README).
        assert c["ts_vs_tl_qk_rel"] < 2e-6, c
        assert c["tl32_vs_tl_qk_rel"] < 2e-7, c
        assert c["pattern_vs_softmax64"] < 1e-6, c
    for name, t in out.items():
        if name.count(".") != 2:
            continue
        qty = name.split(".")[2]
        v = t[~torch.isnan(t)] if t.is_floating_point() else t
        if qty.startswith("kl_"):
            assert (v >= -1e-12).all(), name
        elif qty.startswith("top1") and not qty.endswith("gap"):
            assert ((v == 0) | (v == 1)).all(), name
        elif qty.startswith("r2") and not qty.endswith("_den"):
            assert (v <= 1 + 1e-12).all(), name
        elif qty.startswith(("overlap", "error_share")):
            assert ((v >= 0) & (v <= 1)).all(), name
        elif qty == "groups":
            L, H = name.split(".")[:2]
            ts = out[f"{L}.{H}.term_sum_f64"]
            att = out[f"{L}.{H}.attn_idx"].long()
            G = out[f"{L}.{H}.groups_f64"]
            for b in range(att.shape[0]):
                for i in range(att.shape[1]):
                    for s_ in range(att.shape[2]):
                        j = int(att[b, i, s_])
                        if j >= 0:
                            assert abs(float(G[b, i, s_].sum() - ts[b, i, j])) < 1e-12, name


def main():
    torch.set_grad_enabled(False)
    torch.use_deterministic_algorithms(True)
    cache, weights, config = load_inputs()
    C, H, n_layer = config["n_embd"], config["n_head"], config["n_layer"]
    dh = C // H
    out, checks, layer_meta = {}, [], {}
    for layer in range(n_layer):
        sae = load_sae(SAE_FOR_LAYER[layer])
        x = cache[f"blocks.{layer}.hook_resid_pre"]
        sigma = cache[f"blocks.{layer}.ln1.hook_scale"][..., 0]
        sigma64 = ((x - x.mean(-1, keepdim=True)) ** 2).mean(-1).add(1e-5).sqrt()
        assert (sigma - sigma64).abs().max() / sigma.max() < 1e-6, "hook_scale is not SPEC §2's sigma"
        codes = sae_codes(sae, x)
        active = codes["acts"] > 0
        S = int(active.sum(-1).max())
        f_idx, f_val, _ = sorted_topk(torch.where(active, codes["acts"], torch.full_like(codes["acts"], -INF)), S)
        out[f"{layer}.sae_idx"], out[f"{layer}.sae_val"] = i32(f_idx), f32(f_val)
        out[f"{layer}.sae_count"] = i32(active.sum(-1))
        out[f"{layer}.sae_r"], out[f"{layer}.sae_mu"] = f32(codes["r"]), f32(codes["mu"])
        out[f"{layer}.sae_err_norm"] = f32(codes["err"].norm(dim=-1))
        kind, k = sae_kind(sae)
        layer_meta[layer] = {"sae": SAE_FOR_LAYER[layer], "activation": kind, "k": k,
                             "normalize_activations": sae.cfg.normalize_activations,
                             "apply_b_dec_to_input": sae.cfg.apply_b_dec_to_input,
                             "d_sae": sae.cfg.d_sae,
                             "enc_slots": k if kind == "topk" else ENC_SLOTS_RELU,
                             "sae_slots": S}
        for head in range(H):
            fold = fold_head(weights, layer, head, C, H)
            analyse_head(layer, head, cache, fold, head_tables(fold, sae), sae, codes, sigma, dh,
                         out, checks)
    sanity(out, checks)

    meta = {
        "generator": "tests/reference/make_analysis_ref.py (float64 PyTorch, TransformerLens cache, SAELens SAEs)",
        "model": MODEL_DIR, "k": str(K_LOOKFOR), "a": str(A_KEYS), "p": str(P_PAIRS),
        "groups": ",".join(GROUPS),
        "group_note": "column A (key-side attention bias) is the same for every key: softmax ignores it",
        "layers": json.dumps(layer_meta),
        "torch": torch.__version__,
        "sae_lens": importlib.metadata.version("sae_lens"),
        "transformer_lens_cache": importlib.metadata.version("transformer_lens"),
        "safetensors": importlib.metadata.version("safetensors"),
    }
    os.makedirs(OUT_DIR, exist_ok=True)
    path = os.path.join(OUT_DIR, "ref.safetensors")
    save_deterministic(out, path, meta)

    print(f"wrote {path}: {len(out)} tensors, {os.path.getsize(path) / 1e6:.2f} MB")
    for layer, lm in layer_meta.items():
        print(f"layer {layer}: {lm}")
    keys = ["ts_vs_s64_rel", "groups_vs_ts", "ts_vs_tl_elem_rel", "ts_vs_tl_row_rel", "ts_vs_tl_qk_rel",
            "tl32_vs_tl_qk_rel",
            "tl_vs_tlqk64_row_rel", "q64_vs_hookq_rel", "pattern_vs_softmax64"]
    print("head  " + "  ".join(f"{k_[:10]:>10s}" for k_ in keys) + "  match@1e-9  enc_max  kl_both")
    for c in checks:
        print(f"{c['head']:5s} " + "  ".join(f"{c[k_]:10.2e}" for k_ in keys)
              + f"  {c['ts_tl_match_1e9']:4d}/{c['n_scores']}  {c['enc_count_max']:7d}  {c['mean_kl_both']:.4g}")
    for L in range(n_layer):
        for h in range(H):
            print(f"{L}.{h} " + " ".join(f"{m_}={float(out[f'{L}.{h}.mean.{m_}']):.4g}"
                                          for m_ in METRICS))
            print(f"    nosink " + " ".join(f"{m_}={float(out[f'{L}.{h}.mean.{m_}_nosink']):.4g}"
                                            for m_ in METRICS))


if __name__ == "__main__":
    main()
