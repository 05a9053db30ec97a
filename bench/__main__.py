"""Run the benchmarks: `python -m bench` runs scrape and loadgen; `python -m bench NAME
[flags]` runs one (scrape, loadgen, agree, simulator, tune ...; NAME --help for its flags)."""

import importlib
import inspect
import sys

DEFAULT = ("scrape", "loadgen")


def main() -> None:
    if len(sys.argv) < 2:
        for name in DEFAULT:
            importlib.import_module(f"bench.{name}").main()
        return
    name, argv = sys.argv[1], sys.argv[2:]
    try:
        module = importlib.import_module(f"bench.{name}")
    except ModuleNotFoundError:
        sys.exit(f"python -m bench: no benchmark named {name!r}")
    run = module.main
    run(argv) if inspect.signature(run).parameters else run()


main()
