#!/usr/bin/env python3
"""Regenerates every committed reference file (`make reference`).  Run from the repo root."""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = ["make_gpt2_ref.py", "make_sae_ref.py", "make_analysis_ref.py", "make_tokenizer_ref.py"]

for s in SCRIPTS:
    print("==", s, flush=True)
    subprocess.run([sys.executable, os.path.join(HERE, s)], check=True)
