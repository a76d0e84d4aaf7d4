"""The nba_api source against a real HTTP server on 127.0.0.1 that answers in the stats API's response shapes.

The requests are made by the ``nba_api`` package itself (its endpoints, its requests session and headers); only its
base URL points at the local server (``MAS_NBA_STATS_URL``, which sets ``NBAStatsHTTP.base_url``). The server also
serves the play videos, so the listed URLs are downloaded by the download stage (yt-dlp) as real ones would be."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from pipeline.config import DownloadConfig, Source
from pipeline.download import download_all, expand_sources
from pipeline.nba_source import NbaApiError, NbaApiSource
from storage import Catalog, Workspace
from tests.test_download import make_video

pytest.importorskip("nba_api", reason="pip install 'mas-pipeline[nba]'")

LAL = "1610612747"
GAMES = {"0022300061": "2023-10-24", "0022300075": "2023-10-26", "0022300100": "2023-10-29"}
# per game: (actionNumber, actionType, videoAvailable)
ACTIONS = [(2, "period", 0), (4, "Made Shot", 1), (7, "Missed Shot", 1), (9, "Rebound", 1), (11, "Made Shot", 0)]


class StatsServer(BaseHTTPRequestHandler):
    """stats.nba.com's three endpoints, a few injected failures, and the play videos."""

    log: list[tuple[float, str, dict]] = []
    failures: dict[str, list[int]] = {}  # path + query -> HTTP codes to answer first
    video: bytes = b""

    def log_message(self, *args):  # keep the test output clean
        pass

    def _send(self, code: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802 - http.server's name
        url = urlparse(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        self.log.append((time.monotonic(), url.path, query))
        queued = self.failures.get(f"{url.path}?{query.get('GameID', '')}:{query.get('GameEventID', '')}")
        if queued:
            return self._send(queued.pop(0), b"<html>busy</html>", "text/html")
        if url.path.startswith("/videos/"):
            return self._send(200, self.video, "video/mp4")
        if url.path == "/stats/leaguegamefinder":
            assert query["TeamID"] == LAL and query["Season"] == "2023-24" and query["LeagueID"] == "00"
            headers = ["SEASON_ID", "TEAM_ID", "TEAM_ABBREVIATION", "GAME_ID", "GAME_DATE", "MATCHUP"]
            rows = [["22023", int(LAL), "LAL", g, d, "LAL vs. X"] for g, d in GAMES.items()]
            results = [{"name": "LeagueGameFinderResults", "headers": headers, "rowSet": rows}]
            body = {"resource": "leaguegamefinder", "parameters": query, "resultSets": results}
        elif url.path == "/stats/playbyplayv3":
            game = query["GameID"]
            actions = [{"actionNumber": n, "actionType": t, "videoAvailable": v, "description": f"{t} {n}",
                        "clock": "PT11M00.00S", "period": 1} for n, t, v in ACTIONS]  # fmt: skip
            body = {"meta": {"version": 1}, "game": {"gameId": game, "videoAvailable": 1, "actions": actions}}
        elif url.path == "/stats/videoeventsasset":
            game, event = query["GameID"], query["GameEventID"]
            host = f"http://127.0.0.1:{self.server.server_address[1]}"
            urls = [{"uuid": f"{game}-{event}", "sdur": 8000, "surl": f"{host}/videos/{game}-{event}-small.mp4",
                     "mdur": 8000, "murl": f"{host}/videos/{game}-{event}-med.mp4", "lurl": None}]  # fmt: skip
            if event == "7":  # listed with video but no file yet
                urls = [{"uuid": "", "surl": None, "murl": None, "lurl": None}]
            playlist = [{"gi": game, "ei": int(event), "dsc": f"play {event} of {game}"}]
            body = {"resource": "videoeventsasset", "parameters": {"GameID": game, "GameEventID": int(event)},
                    "resultSets": {"Meta": {"videoUrls": urls}, "playlist": playlist}}  # fmt: skip
        else:
            return self._send(404, b"{}")
        self._send(200, json.dumps(body).encode())


@pytest.fixture()
def stats_server(tmp_path, monkeypatch):
    StatsServer.log, StatsServer.failures = [], {}
    StatsServer.video = make_video(tmp_path / "play.mp4", frames=8).read_bytes()
    server = ThreadingHTTPServer(("127.0.0.1", 0), StatsServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    monkeypatch.setenv("MAS_NBA_STATS_URL", f"http://127.0.0.1:{port}/stats")
    monkeypatch.delenv("NBA_API_PROXY", raising=False)
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    yield port
    server.shutdown()
    server.server_close()


def test_lists_play_videos_of_a_team_season_with_retries_and_spacing(stats_server, tmp_path):
    from nba_api.stats.library.http import NBAStatsHTTP

    ws = Workspace(tmp_path / "ws")
    StatsServer.failures = {"/stats/videoeventsasset?0022300100:4": [503, 429]}  # twice busy, then fine
    source = NbaApiSource("season=2023-24;team=LAL;max_games=2;max_plays=10;interval_s=0.2;backoff_s=0.01", ws)
    plays = source.plays()
    # newest two games first; plays with video and a file: 4 and 9 (7 has no file yet, 2 and 11 no video)
    assert [p.play_id for p in plays] == ["nba-0022300100-4", "nba-0022300100-9", "nba-0022300075-4",
                                          "nba-0022300075-9"]  # fmt: skip
    assert plays[0].url == f"http://127.0.0.1:{stats_server}/videos/0022300100-4-med.mp4"
    assert plays[0].description == "play 4 of 0022300100" and plays[0].action_type == "Made Shot"
    paths = [path for _, path, _ in StatsServer.log]
    assert paths.count("/stats/leaguegamefinder") == 1 and paths.count("/stats/playbyplayv3") == 2
    assert paths.count("/stats/videoeventsasset") == 2 * 3 + 2  # plays 4, 7, 9 of two games + two retries
    gaps = [b[0] - a[0] for a, b in zip(StatsServer.log, StatsServer.log[1:], strict=False)]
    assert min(gaps) >= 0.1, gaps  # polite: requests spaced by interval_s (0.2 s; retries too), seen by the server
    assert NBAStatsHTTP.base_url == "https://stats.nba.com/stats/{endpoint}"  # nba_api's own setting restored
    records = {r.id: r for r in Catalog(ws).records("play")}
    assert {k for k, r in records.items() if r.status == "done"} == {p.play_id for p in plays}
    assert records["nba-0022300075-9"].meta["url"].endswith("/videos/0022300075-9-med.mp4")
    assert records["nba-0022300075-9"].meta["description"] == "play 9 of 0022300075"

    assert records["nba-0022300075-7"].status == "failed" and "no video file" in records["nba-0022300075-7"].error

    # listing again reuses the recorded plays: video requests only for the plays that had no file (7)
    StatsServer.log.clear()
    again = NbaApiSource("season=2023-24;team=LAL;max_games=2;max_plays=10;interval_s=0", ws).plays()
    assert again == plays
    assert [q["GameEventID"] for _, p, q in StatsServer.log if p == "/stats/videoeventsasset"] == ["7", "7"]


def test_listed_plays_are_downloaded_by_the_download_stage(stats_server, tmp_path):
    ws = Workspace(tmp_path / "ws")
    source = Source(kind="nba_api", value="game=0022300061;actions=Made Shot;max_plays=1;interval_s=0")
    assert [item for _, item in expand_sources([source], ws)] == [
        f"http://127.0.0.1:{stats_server}/videos/0022300061-4-med.mp4"
    ]
    results = download_all(ws, [source], DownloadConfig(retries=0), progress=False)
    assert [r.status for r in results] == ["done"] and results[0].meta["frames"] == 8
    assert results[0].source.endswith("/videos/0022300061-4-med.mp4")


def test_refusals_and_outages_fail_clearly(stats_server, tmp_path, monkeypatch):
    StatsServer.failures = {"/stats/playbyplayv3?0022300061:": [403]}
    with pytest.raises(NbaApiError, match=r"refused the plays of game 0022300061 \(HTTP 403\).*NBA_API_PROXY"):
        NbaApiSource("game=0022300061;interval_s=0").plays()
    StatsServer.failures = {"/stats/playbyplayv3?0022300061:": [500, 500, 500]}
    with pytest.raises(NbaApiError, match=r"did not answer the plays of game 0022300061 after 3 tries \(HTTP 500\)"):
        NbaApiSource("game=0022300061;interval_s=0;retries=2;backoff_s=0").plays()
    with pytest.raises(NbaApiError, match="unknown team 'XYZ'"):
        NbaApiSource("season=2023-24;team=XYZ").plays()
    with pytest.raises(NbaApiError, match="needs season=YYYY-YY or game="):
        NbaApiSource("team=LAL")
    monkeypatch.setenv("MAS_NBA_STATS_URL", "http://127.0.0.1:9/stats")  # nothing listens on port 9
    with pytest.raises(NbaApiError, match=r"did not answer .* after 2 tries \(ConnectionError"):
        NbaApiSource("game=0022300061;interval_s=0;retries=1;backoff_s=0;timeout_s=2").plays()


def test_missing_package_names_the_install(monkeypatch):
    import sys

    for name in [m for m in sys.modules if m == "nba_api" or m.startswith("nba_api.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "nba_api", None)  # as if it were not installed
    with pytest.raises(NbaApiError, match=r"needs the `nba_api` package: pip install 'mas-pipeline\[nba\]'"):
        NbaApiSource("game=0022300061").plays()


def test_shipped_nba_config_query_parses():
    import yaml

    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "nba.yaml").read_text())
    source = NbaApiSource(config["sources"][0]["value"])
    assert source.params["season"] and source.max_plays > 0
