"""The demo as a Prefect flow, so its report is also visible as artifacts of the flow run."""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows import artifacts
from pipeline.demo import run_demo


@flow(name="demo", log_prints=True)
def demo_flow(workspace: str = "workspace-demo", size: str = "full", device: str = "auto") -> dict:
    logger = get_run_logger()
    report = run_demo(workspace, size=size, device=device, log=logger.info)
    artifacts.table("demo-numbers", [{"what": k, "value": v} for k, v in report.numbers.items()], "demo numbers")
    text = "\n\n".join(f"## {title}\n\n{body}" for title, body in report.sections)
    artifacts.markdown("demo-report", f"# mas-pipeline demo\n\n{text}\n\nReport with pictures: "
                       f"`{workspace}/report/report.html`", "demo report")  # fmt: skip
    return report.numbers
