"""The catalog under damage and at scale: trashed records, truncated outputs, O(1) lookups, a fast status."""

import logging
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config import Source
from pipeline.download import ingest_file
from storage import Catalog, Workspace
from storage.catalog import Record
from tests.test_download import make_video

runner = CliRunner()


def _parquet(ws: Workspace, path: str, rows: int = 200) -> str:
    with ws.atomic_path(path) as tmp:
        pq.write_table(pa.table({"frame": list(range(rows)), "x": [float(r) for r in range(rows)]}), tmp)
    return path


# ------------------------------------------------------------------------------------------- trashed records
def test_a_trashed_record_is_named_and_does_not_block_the_others(tmp_path, caplog):
    ws = Workspace(tmp_path / "ws")
    catalog = Catalog(ws)
    for vid in ("a", "b", "c"):
        catalog.mark_failed("video", vid, "HTTP 404")
    trashed = tmp_path / "ws" / "catalog" / "video" / "b.json"
    trashed.write_text('{"kind": "video", "id": "b", "sta')  # a kill or a full disk mid-write by another tool
    with caplog.at_level(logging.WARNING, logger="storage.catalog"):
        assert catalog.get("video", "b") is None  # treated as absent
        assert [r.id for r in catalog.records("video")] == ["a", "c"]  # the others are still listed
    assert str(trashed) in caplog.text and "unreadable" in caplog.text and "computes the artifact again" in caplog.text
    shown = runner.invoke(app, ["status", "-w", str(tmp_path / "ws")])
    assert shown.exit_code == 0 and "a " in shown.stdout and "c " in shown.stdout
    assert f"corrupt record: {trashed}" in shown.output.replace("\n", "")
    catalog.mark_running("video", "b")  # the stage rewriting it keeps the broken file aside
    assert catalog.get("video", "b").status == "running"
    assert (tmp_path / "ws" / "catalog" / "video" / "b.json.corrupt").read_text().endswith('"sta')
    (tmp_path / "ws" / "catalog" / "video" / "c.json").write_text("[1, 2]")  # valid JSON, not a record
    assert catalog.get("video", "c") is None


def test_importing_videos_goes_on_past_a_trashed_record(tmp_path, caplog):
    ws = Workspace(tmp_path / "ws")
    first = ingest_file(ws, make_video(tmp_path / "one.mp4", seed=1), Source(kind="local", value="x"), "one")
    (tmp_path / "ws" / "catalog" / "video" / f"{first.video_id}.json").write_bytes(b"\x00\x00\x00")
    with caplog.at_level(logging.WARNING, logger="storage.catalog"):
        second = ingest_file(ws, make_video(tmp_path / "two.mp4", seed=2), Source(kind="local", value="x"), "two")
        again = ingest_file(ws, tmp_path / "one.mp4", Source(kind="local", value="x"), "one")
    assert second.status == "done"
    assert again.status == "done" and again.video_id == first.video_id  # its record rebuilt, not "duplicate"
    assert f"{first.video_id}.json" in caplog.text and "moved aside" in caplog.text
    assert Catalog(ws).get("video", first.video_id).status == "done"


# --------------------------------------------------------------------------------------------- damaged outputs
def test_a_truncated_output_is_not_trusted_as_done(tmp_path, caplog):
    ws = Workspace(tmp_path / "ws")
    catalog = Catalog(ws)
    path = _parquet(ws, ws.poses_path("v1"))
    record = catalog.mark_done("poses", "v1", key="k", outputs=[path])
    assert record.sizes == {"poses/v1.parquet": os.path.getsize(path)}
    assert catalog.is_done("poses", "v1", key="k")
    with open(path, "r+b") as handle:  # a copy or a sync that stopped half-way
        handle.truncate(os.path.getsize(path) // 2)
    assert catalog.state("poses", "v1", key="k") == "damaged"
    with caplog.at_level(logging.WARNING, logger="storage.catalog"):
        assert not catalog.is_done("poses", "v1", key="k")
    assert f"{path} has" in caplog.text and "truncated or replaced" in caplog.text and "computed again" in caplog.text
    # a record written before sizes were kept: the Parquet footer tells
    legacy = _parquet(ws, ws.tracks_path("v1"))
    catalog.put(Record(kind="tracks", id="v1", status="done", key="k", outputs=["tracks/v1.parquet"]))
    assert catalog.is_done("tracks", "v1", key="k")
    with open(legacy, "r+b") as handle:
        handle.truncate(os.path.getsize(legacy) - 100)
    assert catalog.state("tracks", "v1", key="k") == "damaged"
    assert "no footer" in catalog.output_problem(catalog.get("tracks", "v1"))


# --------------------------------------------------------------------------------------------------- scale
def test_finding_a_video_by_content_never_lists_the_catalog(tmp_path, monkeypatch):
    ws = Workspace(tmp_path / "ws")
    catalog = Catalog(ws)
    for i in range(300):
        out = ws.write_bytes(ws.path("videos", f"v{i}", "video.mp4"), b"x")
        catalog.mark_done("video", f"v{i}", key=f"{i:064x}", outputs=[out], meta={"sha256": f"{i:064x}"})
    assert catalog.find("video", "sha256", f"{7:064x}").id == "v7"  # the first lookup may index an old workspace
    listings = []
    real_scandir, real_listdir, real_glob, real_ls = os.scandir, os.listdir, ws.fs.glob, ws.fs.ls
    monkeypatch.setattr(os, "scandir", lambda *a, **k: listings.append(a) or real_scandir(*a, **k))
    monkeypatch.setattr(os, "listdir", lambda *a, **k: listings.append(a) or real_listdir(*a, **k))
    monkeypatch.setattr(type(ws.fs), "glob", lambda self, *a, **k: listings.append(a) or real_glob(*a, **k))
    monkeypatch.setattr(type(ws.fs), "ls", lambda self, *a, **k: listings.append(a) or real_ls(*a, **k))
    assert catalog.find("video", "sha256", f"{299:064x}").id == "v299"
    assert catalog.find("video", "sha256", "f" * 64) is None
    results = [ingest_file(ws, make_video(tmp_path / f"new{k}.mp4", frames=3, seed=k),
                           Source(kind="local", value="x"), "x") for k in range(9)]  # fmt: skip
    again = ingest_file(ws, tmp_path / "new3.mp4", Source(kind="local", value="x"), "x")
    assert [r.status for r in results] == ["done"] * 9 and again.status == "duplicate"
    assert again.video_id == results[3].video_id
    catalog_listings = [a for a in listings if "catalog" in str(a[0] if a else "")]
    assert catalog_listings == []  # 9 imports + 1 duplicate: not one listing of the catalog


def test_an_old_workspace_is_indexed_once(tmp_path):
    ws = Workspace(tmp_path / "ws")
    catalog = Catalog(ws)
    out = ws.write_bytes(ws.path("videos", "old", "video.mp4"), b"x")
    catalog.put(Record(kind="video", id="old", status="done", key="k", outputs=["videos/old/video.mp4"],
                       meta={"sha256": "a" * 64}))  # fmt: skip  # written before the index existed
    assert catalog.find("video", "sha256", "a" * 64).id == "old"
    assert (tmp_path / "ws" / "catalog" / "by-sha256" / "video" / "complete").exists()
    catalog.mark_failed("video", "old", "re-downloaded and broken")
    assert catalog.find("video", "sha256", "a" * 64) is None  # an entry is only believed with its done record
    assert ws.exists(out)
    with pytest.raises(ValueError, match="not indexed"):
        catalog.find("video", "fps", "30")


def test_status_of_many_records_is_a_plain_listing_with_totals(tmp_path):
    ws = Workspace(tmp_path / "ws")
    catalog = Catalog(ws)
    for i in range(250):
        catalog.mark_failed("poses", f"v{i:03d}", "no person") if i % 10 == 0 else catalog.mark_running(
            "tracks", f"v{i:03d}"
        )
    result = runner.invoke(app, ["status", "-w", str(tmp_path / "ws")])
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].endswith("250 records") and len(lines) == 252
    assert any(line.startswith("poses      v000") and "failed" in line and "no person" in line for line in lines)
    assert lines[-1] == "totals: poses failed 25, tracks running 225"
    assert Path(tmp_path / "ws").is_dir()
