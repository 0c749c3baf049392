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

from faststar.eval import compare_methods, control_name, load_results, paired_with_random, psnr_by_video

__all__ = ["control_name", "compare", "paired", "split_pair", "main"]
compare, paired = compare_methods, paired_with_random      # the pairing lives in faststar.eval (results.md uses it)


def _by_method(results: dict) -> dict[str, dict]:
    return psnr_by_video(results["rows"])


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
