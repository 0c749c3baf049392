"""Per-video pairs of each FastSTAR configuration against random selection at the same knobs, from an eval run.

    python benchmarks/paired_vs_random.py benchmarks/results/testbed_v2_session6.json

For every `faststar:X` whose `random:X` is in the same `faststar eval` results.json: on how many of the videos
(prompt, seed) FastSTAR's PSNR is higher, and the mean per-video PSNR difference.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def paired(results: dict) -> list[dict]:
    by: dict[str, dict] = {}
    for r in results["rows"]:
        by.setdefault(r["method"], {})[(r["prompt"], r.get("image"), r["seed"])] = r["psnr"]
    out = []
    for m, vids in by.items():
        if not m.startswith("faststar:") or "random:" + m[len("faststar:"):] not in by:
            continue
        ctrl = by["random:" + m[len("faststar:"):]]
        keys = sorted(vids.keys() & ctrl.keys(), key=str)
        diffs = [vids[k] - ctrl[k] for k in keys]
        out.append(dict(method=m, videos=len(keys), wins=sum(d > 0 for d in diffs),
                        mean_diff_db=sum(diffs) / len(diffs) if diffs else float("nan")))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", nargs="+", help="faststar eval results.json")
    a = ap.parse_args(argv)
    print("| configuration | videos better than random | mean PSNR difference dB |\n|---|---|---|")
    for path in a.results:
        for r in paired(json.loads(Path(path).read_text())):
            print(f"| `{r['method']}` | {r['wins']}/{r['videos']} | {r['mean_diff_db']:+.2f} |")


if __name__ == "__main__":
    main()
