#!/usr/bin/env python3
"""rewrite.py: kernels/ as the emulated CUDA device compiles it (make test-emu).

The nvcc build is unchanged; for the emulated device each file of kernels/ is copied with two
rewrites the host compiler needs, line for line (every line keeps its number, and a #line
directive names the original file, so diagnostics, gcov and stack traces point into kernels/):

  kernel<<<grid, block[, smem[, stream]]>>>(args)
      -> ::cudaemu::launcher(kernel, "kernel", grid, block[, smem[, stream]])(args)
  __shared__ T name[dims];           (static shared memory: one object per block)
      -> a reference to ::cudaemu::shared_static(site, sizeof, alignof)
  extern __shared__ [__align__(n)] T name[];   (dynamic shared memory)
      -> T *const name = the launch's dynamic shared memory

Only code is rewritten: comments and string literals are left alone.

usage: rewrite.py SRC_ROOT OUT_ROOT FILE...   (FILE relative to the current directory)
"""
import os
import re
import sys

IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_:]*$")
SHARED = re.compile(
    r"(?P<extern>extern\s+)?__shared__\s+(?:__align__\s*\(\s*\d+\s*\)\s+)?(?P<type>[^;\[\]{}()]+?)\s*"
    r"\b(?P<name>[A-Za-z_]\w*)\s*(?P<dims>(?:\[[^\];]*\])+)\s*;")


def code_mask(s):
    """mask[i] is True where s[i] is code (not a comment, string or character literal)."""
    mask = [True] * len(s)
    i, n = 0, len(s)
    while i < n:
        c = s[i]
        if s.startswith("//", i):
            j = s.find("\n", i)
            j = n if j < 0 else j
            for k in range(i, j):
                mask[k] = False
            i = j
        elif s.startswith("/*", i):
            j = s.find("*/", i + 2)
            j = n if j < 0 else j + 2
            for k in range(i, j):
                mask[k] = False
            i = j
        elif c in "\"'":
            j = i + 1
            while j < n and s[j] != c:
                j += 2 if s[j] == "\\" else 1
            for k in range(i, min(j + 1, n)):
                mask[k] = False
            i = j + 1
        else:
            i += 1
    return mask


def kernel_start(s, end):
    """Start of the kernel expression that ends at s[end - 1] (a name, maybe with <template args>)."""
    i = end
    while i > 0 and s[i - 1].isspace():
        i -= 1
    if i > 0 and s[i - 1] == ">":
        depth = 0
        while i > 0:
            i -= 1
            if s[i] == ">":
                depth += 1
            elif s[i] == "<":
                depth -= 1
                if depth == 0:
                    break
    j = i
    while j > 0 and (s[j - 1].isalnum() or s[j - 1] in "_:"):
        j -= 1
    if not IDENT.match(s[j:i]):
        raise ValueError("cannot find the kernel name before <<< at offset %d" % end)
    return j


def rewrite_launches(s, path):
    out, pos = [], 0
    mask = code_mask(s)
    i = s.find("<<<")
    while i >= 0:
        if not mask[i]:
            i = s.find("<<<", i + 3)
            continue
        j = s.find(">>>", i)
        if j < 0:
            raise ValueError("%s: <<< without >>>" % path)
        start = kernel_start(s, i)
        name = s[start:i].strip()
        label = re.sub(r"\s+", " ", name).replace('"', '\\"')
        out.append(s[pos:start])
        out.append('::cudaemu::launcher(%s, "%s", %s)' % (name, label, s[i + 3:j]))
        pos = j + 3
        i = s.find("<<<", pos)
    out.append(s[pos:])
    return "".join(out)


def rewrite_shared(s):
    mask = code_mask(s)

    def repl(m):
        if not mask[m.start()]:
            return m.group(0)
        t, name, dims = m.group("type").strip(), m.group("name"), m.group("dims")
        if m.group("extern"):
            return "%s *const %s = static_cast<%s *>(::cudaemu::shared_dynamic());" % (t, name, t)
        tt = "qk_emu_shared_t_" + name
        return ("typedef %s %s%s; static char qk_emu_site_%s; %s &%s = *static_cast<%s *>("
                "::cudaemu::shared_static(&qk_emu_site_%s, sizeof(%s), alignof(%s)));"
                % (t, tt, dims, name, tt, name, tt, name, tt, tt))

    return SHARED.sub(repl, s)


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    src_root, out_root = sys.argv[1], sys.argv[2]
    for f in sys.argv[3:]:
        with open(f) as fh:
            s = fh.read()
        r = rewrite_shared(rewrite_launches(s, f))
        if r.count("\n") != s.count("\n"):
            sys.exit("%s: the rewrite changed the line count" % f)
        rel = os.path.relpath(f, src_root)
        dst = os.path.join(out_root, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        text = '#line 1 "%s"\n' % f + r
        if os.path.exists(dst):
            with open(dst) as fh:
                if fh.read() == text:
                    continue
        with open(dst, "w") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
