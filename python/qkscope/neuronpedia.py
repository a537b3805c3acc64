"""Neuronpedia dashboard URLs for the SAE releases qkscope knows (SPEC section 7).

A run or static file describes the SAE serving head L.H in `sae/blocks.L.hook_resid_pre`
(attributes `hook_name`, `d_sae`, `dir`).  Known releases:
  gpt2-small-resid-post-v5-32k (OpenAI v5, topk, d_sae 32768, hook blocks.N.hook_resid_post):
      https://neuronpedia.org/gpt2-small/{N}-res_post_32k-oai/{index}
  gpt2-small-res-jb (d_sae 24576, hook blocks.N.hook_resid_pre):
      https://neuronpedia.org/gpt2-small/{N}-res-jb/{index}
N is the SAE's own layer from its hook name: the v5 SAE serving head 5.7 is layer 4's resid_post.
Anything else (the synthetic demo's SAEs, other models) has no URL: None.
"""
import re

BASE = "https://neuronpedia.org/gpt2-small"


def sae_id(hook_name, d_sae, model_d=None):
    """The Neuronpedia SAE id (e.g. `4-res_post_32k-oai`) or None when the release is not a known one."""
    m = re.fullmatch(r"blocks\.(\d+)\.hook_(resid_post|resid_pre)", hook_name or "")
    if not m:
        return None
    n, kind = int(m.group(1)), m.group(2)
    if kind == "resid_post" and d_sae == 32768:
        return f"{n}-res_post_32k-oai"
    if kind == "resid_pre" and d_sae == 24576:
        return f"{n}-res-jb"
    return None


def url(sid, feature):
    return None if sid is None else f"{BASE}/{sid}/{int(feature)}"
