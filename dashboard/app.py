"""The servescope dashboard: ``streamlit run dashboard/app.py -- --db PATH``.

Without ``--db`` it reads the store named by ``SERVESCOPE_DB``, else the default path. The
dashboard only reads the store (opened read-only: never created, migrated or written);
collectors and load runs write to it meanwhile.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import streamlit as st

from servescope.core.store import Store, StoreError, default_db_path
from servescope.dashboard import capacity, compare, live, run, sweep


def db_path(argv: Sequence[str]) -> Path:
    """``--db PATH`` from the script's arguments, else `default_db_path()`."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--db")
    args, _ = parser.parse_known_args(list(argv))
    return Path(args.db).expanduser() if args.db else default_db_path()


@st.cache_resource
def open_store(path: str) -> Store:
    """One read-only store handle per process, shared by all sessions (Store is
    thread-safe). A failure is not cached: the next rerun tries again."""
    return Store.open_readonly(path)


def main() -> None:
    st.set_page_config(page_title="servescope", page_icon=":material/monitoring:", layout="wide")
    try:
        store = open_store(str(db_path(sys.argv[1:])))
    except StoreError as exc:  # missing, from another version, not a store: say so, stop
        st.title("servescope")
        st.warning(str(exc))
        st.stop()

    def live_page() -> None:
        live.render(store)

    def run_page() -> None:
        run.render(store)

    runs = st.Page(run_page, title="Run", icon=":material/speed:", url_path="run")

    def sweep_page() -> None:
        sweep.render(store, run_page=runs)

    def compare_page() -> None:
        compare.render(store)

    def capacity_page() -> None:
        capacity.render(store)

    lives = st.Page(live_page, title="Live", icon=":material/monitoring:", url_path="live")

    def home() -> None:
        st.switch_page(lives)

    # Streamlit serves the default page at "/" and nowhere else; a hidden default page that
    # moves on to Live gives Live a URL of its own (/live) that can be bookmarked.
    page = st.navigation(
        [
            st.Page(home, title="servescope", url_path="home", default=True,
                    visibility="hidden"),
            lives,
            runs,
            st.Page(
                sweep_page, title="Sweep", icon=":material/stacked_line_chart:", url_path="sweep"
            ),
            st.Page(compare_page, title="Compare", icon=":material/compare:",
                    url_path="compare"),
            st.Page(capacity_page, title="Capacity", icon=":material/memory:",
                    url_path="capacity"),
        ]
    )
    st.sidebar.caption(f"Store: `{store.path}`")
    page.run()


if __name__ == "__main__":
    main()
