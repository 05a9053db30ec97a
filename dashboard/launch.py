"""How to start the dashboard: `streamlit run` on the installed app.py, found as package
data (importlib.resources), so it works from a wheel in any directory."""

from __future__ import annotations

import sys
from importlib.resources import files
from pathlib import Path


def app_path() -> Path:
    return Path(str(files("servescope.dashboard") / "app.py"))


def dashboard_command(db: Path, host: str, port: int) -> list[str]:
    return [
        sys.executable, "-m", "streamlit", "run", str(app_path()),
        "--server.address", host, "--server.port", str(port), "--server.headless", "true",
        "--browser.gatherUsageStats", "false", "--", "--db", str(db),
    ]
