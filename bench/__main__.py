"""Run the benchmarks: python -m bench [scrape]"""

import sys

from bench import scrape


def main() -> None:
    which = sys.argv[1:] or ["scrape"]
    for name in which:
        {"scrape": scrape.main}[name]()


main()
