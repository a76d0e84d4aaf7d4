"""The demo as a Prefect flow: its parts are task runs, its report (numbers, tables and pictures) artifacts."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows import artifacts
from pipeline.demo import DemoReport, run_demo
from storage import Workspace


def _as_task(name: str, fn, *args):
    """Run one part of the demo as a task run of the flow (shown with its state and duration in the UI)."""
    return task(fn, name=name, task_run_name=name, cache_policy=NO_CACHE)(*args)


def report_markdown(report: DemoReport, out: Path) -> str:
    """The report as one Markdown artifact: every section (full metrics tables) and the pictures inline."""
    text = "\n\n".join(f"## {title}\n\n{body}" for title, body in report.sections)
    pictures = "\n\n".join(f"![{caption}]({path})\n\n*{caption}*" for caption, path in report.images)
    markdown = f"# mas-pipeline demo\n\n{text}\n\n## Pictures\n\n{pictures}\n\nReport files: `{out}`\n"
    return artifacts.inline_images(markdown, lambda path: (out / path).read_bytes())


@flow(name="demo", log_prints=True)
def demo_flow(workspace: str = "workspace-demo", size: str = "full", device: str = "auto") -> dict:
    logger = get_run_logger()
    report = run_demo(workspace, size=size, device=device, log=logger.info, stage=_as_task)
    rows = [{"what": k, "value": "; ".join(v) if isinstance(v, list) else v} for k, v in report.numbers.items()]
    artifacts.table("demo-numbers", rows, "demo numbers")
    out = Path(Workspace(workspace).root) / "report"
    artifacts.markdown("demo-report", report_markdown(report, out), "demo report with pictures")
    return report.numbers
