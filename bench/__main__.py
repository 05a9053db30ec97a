"""Run the benchmarks: python -m bench [scrape] [loadgen]"""

import sys

from bench import loadgen, scrape


def main() -> None:
    which = sys.argv[1:] or ["scrape", "loadgen"]
    for name in which:
        {"scrape": scrape.main, "loadgen": loadgen.main}[name]()


main()
