"""Helpers shared by the bench/*.py benchmarks: the machine's name, the results-table rows, and the
GPT-2-small-shaped random model (made once, cached under build/bench/)."""
import datetime
import os
import platform

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_DIR = os.path.join(ROOT, "build", "bench")
GPT2_RANDOM_DIR = os.path.join(BENCH_DIR, "gpt2-small-random")


def cpu_name():
    """The CPU model from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine():
    """'CPU model, N cores': the machine column of the results tables."""
    return f"{cpu_name()}, {os.cpu_count()} cores"


def today(minutes=False):
    return datetime.datetime.now().strftime("%Y-%m-%d %H:%M" if minutes else "%Y-%m-%d")


def append_row(path, header, row):
    """Appends one markdown table row (a string ending in a newline) to path; header (title,
    notes, table head) is written first when the file is new."""
    path = os.path.join(ROOT, path) if not os.path.isabs(path) else path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    new = not os.path.exists(path)
    with open(path, "a") as f:
        if new:
            f.write(header)
        f.write(row)
    return path


def gpt2_small_random(work=GPT2_RANDOM_DIR, attn_implementation="sdpa"):
    """A GPT-2-small-shaped GPT2LMHeadModel with random weights (seed 0), in eval mode.  Saved with
    save_pretrained into `work` (qkscope reads that folder) the first time, loaded from it after."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(attn_implementation=attn_implementation)).eval()
    if not os.path.exists(os.path.join(work, "model.safetensors")):
        hf.save_pretrained(work)
    else:
        from safetensors.torch import load_file
        hf.load_state_dict(load_file(os.path.join(work, "model.safetensors")), strict=False)
    return hf, work
