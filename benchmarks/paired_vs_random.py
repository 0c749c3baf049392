"""Per-video pairs of each FastSTAR configuration against random selection at the same knobs, from an eval run.

    python benchmarks/paired_vs_random.py benchmarks/results/testbed_v2_session6.json
    python benchmarks/paired_vs_random.py benchmarks/results/testbed_v2_session9.json \
        --pair faststar:fast+block=2=faststar:fast        # any two methods of the file: A=B (B's name after "=")

For every `faststar:X` whose `random:X` is in the same `faststar eval` results.json (X without the knobs that
only change the score or spread the selection, which the random control does not read): on how many of the videos
(prompt, seed) FastSTAR's PSNR is higher, the mean per-video PSNR difference and its standard error. With
``--pair``, the same for the pairs given instead.
"""
from __future__ import annotations

import argparse

from faststar.accel.presets import SELECTION_SPREAD
from faststar.eval import load_results


# knobs that only change how FastSTAR scores tokens: the random control ignores them
SCORE_KNOBS = ("spatial", "temporal", "w_sp", "w_tm", "w_detail", "norm", "probe_layer")


def control_name(method: str) -> str:
    """random:X for faststar:X, without the knobs that random selection does not read."""
    parts = method[len("faststar:"):].split("+")
    kept = [parts[0]] + [p for p in parts[1:] if p.split("=")[0] not in SCORE_KNOBS + SELECTION_SPREAD]
    return "random:" + "+".join(kept)


def _by_method(results: dict) -> dict[str, dict]:
    by: dict[str, dict] = {}
    for r in results["rows"]:
        by.setdefault(r["method"], {})[(r["prompt"], r.get("image"), r["seed"])] = r["psnr"]
    return by


def compare(by: dict[str, dict], method: str, control: str) -> dict:
    """Per-video PSNR of ``method`` minus ``control`` over their common videos."""
    vids, ctrl = by[method], by[control]
    keys = sorted(vids.keys() & ctrl.keys(), key=str)
    diffs = [vids[k] - ctrl[k] for k in keys]
    n = len(diffs)
    mean = sum(diffs) / n if n else float("nan")
    se = (sum((d - mean) ** 2 for d in diffs) / (n - 1) / n) ** 0.5 if n > 1 else float("nan")
    return dict(method=method, control=control, videos=n, wins=sum(d > 0 for d in diffs), mean_diff_db=mean,
                se_db=se)


def paired(results: dict) -> list[dict]:
    """Every faststar configuration against its random control, where the file has both."""
    by = _by_method(results)
    return [compare(by, m, control_name(m)) for m in by
            if m.startswith("faststar:") and control_name(m) in by]


def split_pair(text: str, methods) -> tuple[str, str]:
    """``A=B`` into (A, B); method names hold "=" themselves, so the split is the one that names two methods."""
    for i, ch in enumerate(text):
        if ch == "=" and text[:i] in methods and text[i + 1:] in methods:
            return text[:i], text[i + 1:]
    raise SystemExit(f"--pair {text!r}: not two methods of the file joined by '='; methods: {sorted(methods)}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", nargs="+", help="faststar eval results.json")
    ap.add_argument("--pair", action="append", default=[], help="A=B: method A against method B (repeatable)")
    a = ap.parse_args(argv)
    print("| configuration | against | videos better | mean PSNR difference dB (standard error) |\n|---|---|---|---|")
    for path in a.results:
        res = load_results(path)
        if a.pair:
            by = _by_method(res)
            rows = [compare(by, *split_pair(p, by)) for p in a.pair]
        else:
            rows = paired(res)
        for r in rows:
            print(f"| `{r['method']}` | `{r['control']}` | {r['wins']}/{r['videos']} | {r['mean_diff_db']:+.2f} "
                  f"({r['se_db']:.2f}) |")


if __name__ == "__main__":
    main()
