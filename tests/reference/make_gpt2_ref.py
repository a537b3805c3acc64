"""Reference values for the GPT-2 loader and the CPU forward pass.

Builds tiny random GPT-2 models with Hugging Face transformers (GPT2Config, random init,
save_pretrained to safetensors), then records TransformerLens's run_with_cache on them (the HF
model loaded into HookedTransformer without any weight processing) plus HF's own logits.

Run from the repo root:  .venv-ref/bin/python tests/reference/make_gpt2_ref.py
Writes tests/reference/data/gpt2_<name>/{config.json, model.safetensors, tokens.txt, cache.safetensors}.
"""
import importlib.metadata
import json
import os
import shutil

import torch
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")

# name: model shape, how it is saved, and the token windows [batch, pos] it is run on.
MODELS = {
    # d_model not a multiple of 64, d_head = 20 != 64; windows of length n_ctx.
    "tiny_a": dict(n_embd=80, n_head=4, n_layer=2, n_positions=24, vocab_size=211,
                   batch=3, pos=24, save="GPT2Model", dtype=torch.float32),
    # a single head; windows of length 1; weights stored as F16 (converted on load).
    "tiny_b": dict(n_embd=32, n_head=1, n_layer=2, n_positions=16, vocab_size=97,
                   batch=2, pos=1, save="GPT2Model", dtype=torch.float16),
    # saved by GPT2LMHeadModel: `transformer.` prefix and a tied lm_head; BF16 weights.
    "tiny_c": dict(n_embd=64, n_head=2, n_layer=3, n_positions=32, vocab_size=150,
                   batch=2, pos=13, save="GPT2LMHeadModel", dtype=torch.bfloat16),
}

HOOKS_PER_LAYER = ["hook_resid_pre", "hook_resid_post", "ln1.hook_scale", "attn.hook_q",
                   "attn.hook_k", "attn.hook_attn_scores", "attn.hook_pattern"]


def randomize(model, gen):
    """Every parameter random, so biases and LN parameters matter in the comparison."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith("ln_f.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif "c_attn.weight" in name:
                p.copy_(0.15 * torch.randn(p.shape, generator=gen))
            elif name.endswith("wte.weight") or name.endswith("wpe.weight"):
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.08 * torch.randn(p.shape, generator=gen))


def tl_model(hf, spec):
    cfg = HookedTransformerConfig(
        n_layers=spec["n_layer"], d_model=spec["n_embd"], n_ctx=spec["n_positions"],
        d_head=spec["n_embd"] // spec["n_head"], n_heads=spec["n_head"], d_mlp=4 * spec["n_embd"],
        d_vocab=spec["vocab_size"], act_fn="gelu_new", normalization_type="LN",
        positional_embedding_type="standard", eps=1e-5, original_architecture="GPT2LMHeadModel",
        default_prepend_bos=False, dtype=torch.float32, device="cpu")
    model = HookedTransformer(cfg)
    model.load_state_dict(convert_gpt2_weights(hf, cfg), strict=False)
    model.eval()
    return model


def build(name, spec, seed):
    d = os.path.join(OUT, "gpt2_" + name)
    shutil.rmtree(d, ignore_errors=True)
    gen = torch.Generator().manual_seed(seed)
    config = GPT2Config(n_embd=spec["n_embd"], n_head=spec["n_head"], n_layer=spec["n_layer"],
                        n_positions=spec["n_positions"], vocab_size=spec["vocab_size"],
                        activation_function="gelu_new", layer_norm_epsilon=1e-5,
                        attn_implementation="eager", tie_word_embeddings=True)
    hf = GPT2LMHeadModel(config).eval()
    randomize(hf, gen)
    # Round the weights through the storage dtype so the reference sees exactly what is on disk.
    with torch.no_grad():
        for p in hf.parameters():
            p.copy_(p.to(spec["dtype"]).float())
    saved = hf if spec["save"] == "GPT2LMHeadModel" else hf.transformer
    saved.to(spec["dtype"]).save_pretrained(d, safe_serialization=True)
    hf.float()
    for extra in ("generation_config.json",):
        if os.path.exists(os.path.join(d, extra)):
            os.remove(os.path.join(d, extra))

    tokens = torch.randint(0, spec["vocab_size"], (spec["batch"], spec["pos"]), generator=gen)
    with open(os.path.join(d, "tokens.txt"), "w") as f:
        for row in tokens.tolist():
            f.write(" ".join(map(str, row)) + "\n")

    model = tl_model(hf, spec)
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
        hf_logits = hf(tokens).logits
    gap = (logits - hf_logits).abs().max().item()
    assert gap < 1e-4 * max(1.0, hf_logits.abs().max().item()), f"{name}: TL and HF logits differ by {gap}"

    out = {"tokens": tokens.to(torch.int32), "logits": hf_logits.float()}
    for layer in range(spec["n_layer"]):
        for h in HOOKS_PER_LAYER:
            key = f"blocks.{layer}.{h}"
            out[key] = cache[key].float().clone().contiguous()
    save_file(out, os.path.join(d, "cache.safetensors"),
              metadata={"generator": "TransformerLens run_with_cache + HF logits",
                        "transformer_lens": importlib.metadata.version("transformer_lens"),
                        "transformers": importlib.metadata.version("transformers"),
                        "torch": torch.__version__})
    print(f"{name}: wrote {d} (logits gap TL vs HF {gap:.2e})")


def main():
    torch.set_grad_enabled(False)
    for i, (name, spec) in enumerate(MODELS.items()):
        build(name, spec, seed=1234 + i)


if __name__ == "__main__":
    main()
