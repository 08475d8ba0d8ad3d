#!/usr/bin/env python3
"""Speculative decoding benchmark: `bitnet generate` greedy with and without drafts on TinyStories text.

Two tasks on paragraphs from the held-out tail of ../shared/data/corpora/tinystories_val_subset.txt:
  copy     - prompt = paragraph + blank line + the paragraph's first sentence (repeat-style: prompt lookup can help)
  repeat   - prompt = paragraph twice + the first sentence (the model has seen itself copy: it copies again)
  continue - prompt = the paragraph's first two sentences (plain story continuation: little to look up)
Modes run alternating per prompt (plain, ngram k=3/5/8, first-2-layers draft k=3) in one process tree, so load
changes hit all modes alike. Every speculative run's token ids are checked against the plain run's (greedy: identical).

usage: bench/speculative.py [--bitnet PATH] [--prompts N] [-n TOKENS] [-t THREADS] [--reps R]
"""
import argparse, json, os, re, subprocess, sys, tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ap = argparse.ArgumentParser()
ap.add_argument("--bitnet", default=os.path.join(ROOT, "src/BitNetSharp.Cli/bin/Release/net10.0/bitnet"))
ap.add_argument("--corpus", default=os.path.join(ROOT, "../shared/data/corpora/tinystories_val_subset.txt"))
ap.add_argument("--prompts", type=int, default=12)
ap.add_argument("-n", type=int, default=64)
ap.add_argument("-t", type=int, default=1)
ap.add_argument("--reps", type=int, default=1)
a = ap.parse_args()

MODES = [
    ("plain", []),
    ("ngram k=3", ["--speculate", "ngram", "--draft-tokens", "3"]),
    ("ngram k=5", ["--speculate", "ngram", "--draft-tokens", "5"]),
    ("ngram k=8", ["--speculate", "ngram", "--draft-tokens", "8"]),
    ("draft-layers 2 k=3", ["--draft-layers", "2", "--draft-tokens", "3"]),
]

text = open(a.corpus, encoding="utf-8").read()
tail = text[int(len(text) * 0.95):]  # the bundled model's held-out 5%
paras = [p.strip() for p in tail.split("\n\n") if 35 <= len(p.split()) <= 60 and p.strip()[:1].isupper()]
sents = lambda p: re.split(r"(?<=[.!?])\s+", p)
paras = [p for p in paras if len(sents(p)) >= 3][: a.prompts]
tasks = {
    "copy": [p + "\n\n" + sents(p)[0] for p in paras],
    "repeat": [p + "\n\n" + p + "\n\n" + sents(p)[0] for p in paras],
    "continue": [" ".join(sents(p)[:2]) for p in paras],
}

def run(prompt, extra):
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        ids_path = f.name
    cmd = [a.bitnet, "generate", "-p", prompt, "-n", str(a.n), "--temp", "0", "--ignore-eos", "--no-echo", "-t", str(a.t), "--ctx", "256", "--ids-out", ids_path] + extra
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr}")
    m = re.search(r"generation: (\d+) tokens, ([\d.]+) tok/s", r.stderr)
    s = re.search(r"(\d+) steps, acceptance [\d.]+% \((\d+)/(\d+)\), ([\d.]+) tokens/step", r.stderr)
    ids = json.load(open(ids_path))["ids"]
    os.unlink(ids_path)
    tokens, rate = int(m.group(1)), float(m.group(2))
    return dict(tokens=tokens, seconds=tokens / rate if rate > 0 else 0, ids=ids,
                steps=int(s.group(1)) if s else tokens - 1, accepted=int(s.group(2)) if s else 0, drafted=int(s.group(3)) if s else 0)

print(f"{len(paras)} paragraphs, {a.n} tokens each, {a.t} thread(s), {a.reps} repetition(s), bitnet {a.bitnet}")
results = {}
for task, prompts in tasks.items():
    totals = {name: dict(tokens=0, seconds=0.0, steps=0, accepted=0, drafted=0) for name, _ in MODES}
    for rep in range(a.reps):
        for i, prompt in enumerate(prompts):
            order = MODES if (i + rep) % 2 == 0 else MODES[::-1]  # alternate which mode runs first
            plain_ids = None
            outs = {}
            for name, extra in order:
                outs[name] = run(prompt, extra)
            for name, _ in MODES:
                o = outs[name]
                if o["ids"] != outs["plain"]["ids"]:
                    sys.exit(f"MISMATCH: {task} prompt {i} mode {name} differs from plain greedy")
                for k in ("tokens", "seconds", "steps", "accepted", "drafted"):
                    totals[name][k] += o[k]
    results[task] = totals
    base = totals["plain"]["tokens"] / totals["plain"]["seconds"]
    print(f"\n## {task}\n")
    print("| mode | tok/s | vs plain | acceptance | tokens/step |")
    print("|---|---:|---:|---:|---:|")
    for name, _ in MODES:
        t = totals[name]
        rate = t["tokens"] / t["seconds"]
        acc = f"{100 * t['accepted'] / t['drafted']:.1f}% ({t['accepted']}/{t['drafted']})" if t["drafted"] else "-"
        # tokens/step counts the first token (from the prefill) too; the CLI's figure does not.
        print(f"| {name} | {rate:.1f} | {rate / base:.2f}x | {acc} | {t['tokens'] / max(1, t['steps']):.2f} |")
print("\nall speculative outputs identical to plain greedy: yes")
