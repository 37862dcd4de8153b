"""Helpers for driving the meeting app in web/ as people do: screenshots of its screens kept as
test artefacts, and axe-core's accessibility check of a screen."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Kept after the run (CI artefacts), ignored by git.
ARTIFACTS = ROOT / "test-artifacts" / "webapp"
BLOCKING_IMPACTS = {"serious", "critical"}


async def screenshot(page: Any, name: str) -> Path:
    """The page as it looks now, saved as ``test-artifacts/webapp/<name>.png``."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{re.sub(r'[^a-z0-9-]+', '-', name.lower())}.png"
    await page.screenshot(path=str(path))
    return path


async def accessibility_problems(page: Any) -> list[str]:
    """axe-core's violations of serious or critical impact on the page as it is now."""
    from axe_playwright_python.async_playwright import Axe

    results = await Axe().run(page)
    return [
        f"{violation['id']} ({violation['impact']}): {violation['help']} — "
        + "; ".join(
            node["target"][0] if isinstance(node["target"][0], str) else str(node["target"])
            for node in violation["nodes"][:5]
        )
        for violation in results.response["violations"]
        if violation.get("impact") in BLOCKING_IMPACTS
    ]


async def check_screen(page: Any, name: str, checked: dict[str, list[str]]) -> None:
    """Screenshot the screen and record what axe-core finds on it (also added to
    ``test-artifacts/webapp/accessibility.json``, screen by screen)."""
    await screenshot(page, name)
    checked[name] = await accessibility_problems(page)
    report = ARTIFACTS / "accessibility.json"
    every = json.loads(report.read_text()) if report.exists() else {}
    report.write_text(json.dumps({**every, name: checked[name]}, indent=2, ensure_ascii=False))
