"""Run the benchmarks: python -m bench [scrape] [loadgen], or python -m bench agree [flags]
(agree takes its own flags: python -m bench agree --help)."""

import sys

from bench import agree, loadgen, scrape


def main() -> None:
    if sys.argv[1:2] == ["agree"]:
        agree.main(sys.argv[2:])
        return
    which = sys.argv[1:] or ["scrape", "loadgen"]
    for name in which:
        {"scrape": scrape.main, "loadgen": loadgen.main}[name]()


main()
