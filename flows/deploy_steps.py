"""A ``prefect.yaml`` pull step: run deployments from this repository's checkout, wherever it is.

``$MAS_PIPELINE_DIR`` names the code directory when set (the image sets ``/opt/mas-pipeline``); otherwise the checkout
this module is installed from (``pip install -e .``), so a process worker started on a developer machine runs the
flows from that machine's checkout.
"""

from __future__ import annotations

import os
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]


def set_working_directory(directory: str | None = None) -> dict[str, str]:
    """Change into ``directory``, else $MAS_PIPELINE_DIR, else the checkout; fails naming the path when it is absent."""
    target = Path(directory or os.environ.get("MAS_PIPELINE_DIR") or CHECKOUT)
    if not (target / "flows" / "stages.py").is_file():
        raise FileNotFoundError(
            f"{target} is not a mas-pipeline checkout (no flows/stages.py); set MAS_PIPELINE_DIR for the worker "
            "to the directory holding the code"
        )
    os.chdir(target)
    return {"directory": str(target)}
