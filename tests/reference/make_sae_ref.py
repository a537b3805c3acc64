"""Tiny SAELens SAEs and SAELens's own encode/decode on them, for tests/test_sae.c.

Run from the repo root:  .venv-ref/bin/python tests/reference/make_sae_ref.py
Writes tests/reference/data/sae/<name>/{cfg.json, sae_weights.safetensors, ref.safetensors}.
Each SAE is built with SAELens's classes, given random parameters (every bias and threshold
non-zero so they matter), saved with SAELens's save_model, and LOADED BACK with
SAE.load_from_disk; the reference values come from the loaded SAE, so they also prove that
SAELens reads the folder (the old-style one included) the way the C loader must.

ref.safetensors: x [n, d_in] inputs (residual-like: non-zero mean, varying scale),
pre [n, d_sae] (hook_sae_acts_pre), acts [n, d_sae] (encode), xhat [n, d_in] (decode(encode));
for the case with centred inputs also acts_centered / xhat_centered: SAELens on x - mean(x),
with mean(x) added back to xhat (the C `center_input` option).
"""

import json
import os
import shutil

import torch
from safetensors.torch import save_file
from sae_lens import (
    SAE,
    JumpReLUSAE,
    JumpReLUSAEConfig,
    StandardSAE,
    StandardSAEConfig,
    TopKSAE,
    TopKSAEConfig,
)

OUT = "tests/reference/data/sae"
N_TOKENS = 16

# name, class, config class, d_in, d_sae, normalisation, apply_b_dec_to_input, extra config
CASES = [
    ("standard_none_bdec", StandardSAE, StandardSAEConfig, 80, 200, "none", True, {}),
    ("standard_ln_nobdec", StandardSAE, StandardSAEConfig, 32, 64, "layer_norm", False, {}),
    ("topk_ln_bdec", TopKSAE, TopKSAEConfig, 80, 200, "layer_norm", True, {"k": 8}),
    ("topk_none_nobdec", TopKSAE, TopKSAEConfig, 32, 64, "none", False, {"k": 5}),
    ("jumprelu_none_bdec", JumpReLUSAE, JumpReLUSAEConfig, 32, 64, "none", True, {}),
    ("jumprelu_ln_nobdec", JumpReLUSAE, JumpReLUSAEConfig, 32, 64, "layer_norm", False, {}),
    # Saved as topk, then cfg.json rewritten in the pre-6.0 style of the v5 release.
    ("v5_oldstyle", TopKSAE, TopKSAEConfig, 80, 200, "layer_norm", True, {"k": 8}),
]


def perturb(sae, gen, d_in):
    with torch.no_grad():
        sae.W_enc.add_(0.05 * torch.randn(sae.W_enc.shape, generator=gen))
        sae.W_dec.copy_(sae.W_enc.T + 0.05 * torch.randn(sae.W_dec.shape, generator=gen))
        sae.b_enc.copy_(0.3 * torch.randn(sae.b_enc.shape, generator=gen))
        sae.b_dec.copy_(0.2 * torch.randn(sae.b_dec.shape, generator=gen))
        if hasattr(sae, "threshold"):
            # mostly positive, a few negative (SAELens then still applies ReLU)
            sae.threshold.copy_(0.4 * torch.rand(sae.threshold.shape, generator=gen) - 0.05)


def residual_like(gen, n, d):
    """Gaussian rows with a shared non-zero mean direction and a per-token scale.  The last 4
    tokens are 100x smaller, so that layer_norm's eps (added outside the root, and absent from
    SAELens's un-normalisation) changes the result by far more than the test tolerance."""
    mean = 0.5 + 0.5 * torch.randn(d, generator=gen)
    scale = 1.0 + 2.0 * torch.rand(n, 1, generator=gen)
    x = mean + scale * torch.randn(n, d, generator=gen)
    x[-4:] *= 0.01
    return x


def old_style_cfg(cfg, k):
    """A cfg.json as the gpt2-small-resid-post-v5-32k release ships it (pre-6.0 keys)."""
    return {
        "architecture": "standard",
        "d_in": cfg["d_in"],
        "d_sae": cfg["d_sae"],
        "dtype": "float32",
        "device": "cpu",
        "model_name": "gpt2-small",
        "hook_name": "blocks.4.hook_resid_post",
        "hook_layer": 4,
        "hook_head_index": None,
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": k},
        "apply_b_dec_to_input": True,
        "finetuning_scaling_factor": False,
        "sae_lens_training_version": None,
        "prepend_bos": False,
        "dataset_path": "Skylion007/openwebtext",
        "context_size": 64,
        "dataset_trust_remote_code": True,
        "normalize_activations": "layer_norm",
        "neuronpedia_id": "gpt2-small/4-res_post_32k-oai",
    }


def encode_decode(sae, x):
    _, cache = sae.run_with_cache(x)
    acts = sae.encode(x)
    return cache["hook_sae_acts_pre"], acts, sae.decode(acts)


def main():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1234)
    for name, cls, cfg_cls, d_in, d_sae, norm, bdec, extra in CASES:
        folder = os.path.join(OUT, name)
        shutil.rmtree(folder, ignore_errors=True)
        cfg = cfg_cls(d_in=d_in, d_sae=d_sae, normalize_activations=norm,
                      apply_b_dec_to_input=bdec, **extra)
        sae = cls(cfg)
        perturb(sae, gen, d_in)
        sae.save_model(folder)
        if name == "v5_oldstyle":
            path = os.path.join(folder, "cfg.json")
            with open(path) as f:
                new = json.load(f)
            with open(path, "w") as f:
                json.dump(old_style_cfg(new, extra["k"]), f)
        loaded = SAE.load_from_disk(folder)
        assert type(loaded) is cls, (name, type(loaded))
        assert loaded.cfg.normalize_activations == norm and loaded.cfg.apply_b_dec_to_input == bdec
        x = residual_like(gen, N_TOKENS, d_in)
        with torch.no_grad():
            pre, acts, xhat = encode_decode(loaded, x)
            ref = {"x": x, "pre": pre, "acts": acts, "xhat": xhat}
            if name == "standard_none_bdec":
                mu = x.mean(dim=-1, keepdim=True)
                _, acts_c, xhat_c = encode_decode(loaded, x - mu)
                ref["acts_centered"] = acts_c
                ref["xhat_centered"] = xhat_c + mu
        save_file({k: v.contiguous().float() for k, v in ref.items()},
                  os.path.join(folder, "ref.safetensors"))
        print(f"{name}: {type(loaded).__name__} d_in={d_in} d_sae={d_sae} norm={norm} "
              f"b_dec_in={bdec} mean L0={float((acts != 0).float().sum(-1).mean()):.1f}")


if __name__ == "__main__":
    main()
