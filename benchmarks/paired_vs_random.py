"""Per-video pairs of each FastSTAR configuration against random selection at the same knobs, from an eval run.

    python benchmarks/paired_vs_random.py benchmarks/results/testbed_v2_session6.json

For every `faststar:X` whose `random:X` is in the same `faststar eval` results.json (X without the knobs that
only change the score, which the random control does not read): on how many of the videos
(prompt, seed) FastSTAR's PSNR is higher, and the mean per-video PSNR difference.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


# knobs that only change how FastSTAR scores tokens: the random control ignores them
SCORE_KNOBS = ("spatial", "temporal", "w_sp", "w_tm", "w_detail", "norm", "probe_layer")


def control_name(method: str) -> str:
    """random:X for faststar:X, without the knobs that random selection does not read."""
    parts = method[len("faststar:"):].split("+")
    kept = [parts[0]] + [p for p in parts[1:] if p.split("=")[0] not in SCORE_KNOBS]
    return "random:" + "+".join(kept)


def paired(results: dict) -> list[dict]:
    by: dict[str, dict] = {}
    for r in results["rows"]:
        by.setdefault(r["method"], {})[(r["prompt"], r.get("image"), r["seed"])] = r["psnr"]
    out = []
    for m, vids in by.items():
        if not m.startswith("faststar:") or control_name(m) not in by:
            continue
        ctrl = by[control_name(m)]
        keys = sorted(vids.keys() & ctrl.keys(), key=str)
        diffs = [vids[k] - ctrl[k] for k in keys]
        n = len(diffs)
        mean = sum(diffs) / n if n else float("nan")
        se = (sum((d - mean) ** 2 for d in diffs) / (n - 1) / n) ** 0.5 if n > 1 else float("nan")
        out.append(dict(method=m, control=control_name(m), videos=n, wins=sum(d > 0 for d in diffs),
                        mean_diff_db=mean, se_db=se))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", nargs="+", help="faststar eval results.json")
    a = ap.parse_args(argv)
    print("| configuration | videos better than random | mean PSNR difference dB (standard error) |\n|---|---|---|")
    for path in a.results:
        for r in paired(json.loads(Path(path).read_text())):
            print(f"| `{r['method']}` | {r['wins']}/{r['videos']} | {r['mean_diff_db']:+.2f} ({r['se_db']:.2f}) |")


if __name__ == "__main__":
    main()
