"""NBA play videos listed through the ``nba_api`` package (stats.nba.com): the ``nba_api`` source kind.

The source's value is a query of ``key=value`` items separated by ``;``::

    season=2023-24            games of a season (LeagueGameFinder), newest first
    team=LAL                  only this team's games (abbreviation or team id); with season
    game=0022300001,0022300002 these games instead of a search
    season_type=Regular Season (default) or Playoffs, Pre Season, All Star
    actions=Made Shot,Missed Shot   only plays of these play-by-play action types (default: every play with video)
    max_games=10  max_plays=200     how many games to look at and plays to list (defaults 10 and 200)
    interval_s=0.6  retries=3  backoff_s=2  timeout_s=30   politeness: time between requests, retries with
                                                           exponential backoff, per-request timeout

For each game, ``PlayByPlayV3`` lists the plays (``actionNumber``, ``actionType``, ``videoAvailable``); for each
play with video, ``VideoEventsAsset(game_id, game_event_id=actionNumber)`` answers ``resultSets.Meta.videoUrls``
(``lurl`` 1280x720, ``murl`` 960x540, ``surl`` small mp4 URLs; the first available of these is taken) and
``resultSets.playlist`` (the play's description). Every listed play is a catalog record (kind ``play``, id
``nba-<game id>-<action number>``) holding its URL and description; listing again reuses those records without a
request. Requests go through nba_api's own client (its headers, its proxy setting ``NBA_API_PROXY``) to
``https://stats.nba.com/stats`` or to the URL in ``MAS_NBA_STATS_URL`` (a mirror or a cache).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from storage import Catalog, Workspace

STATS_URL_ENV = "MAS_NBA_STATS_URL"
VIDEO_KEYS = ("lurl", "murl", "surl")
QUERY_KEYS = {"season", "team", "game", "season_type", "actions", "max_games", "max_plays", "interval_s", "retries",
              "backoff_s", "timeout_s"}  # fmt: skip


class NbaApiError(RuntimeError):
    """stats.nba.com (or the nba_api package) could not list play videos; the message says why and what to do."""


@dataclass(frozen=True)
class Play:
    game_id: str
    event_id: int
    url: str
    description: str = ""
    action_type: str = ""

    @property
    def play_id(self) -> str:
        return f"nba-{self.game_id}-{self.event_id}"


def parse_query(query: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for part in query.split(";"):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in QUERY_KEYS:
            raise NbaApiError(f"nba_api source: bad query item {part.strip()!r}; expected key=value with keys "
                              f"{', '.join(sorted(QUERY_KEYS))} (e.g. season=2023-24;team=LAL)")  # fmt: skip
        params[key] = value.strip()
    if not params.get("season") and not params.get("game"):
        raise NbaApiError("nba_api source: the query needs season=YYYY-YY or game=<game id>[,<game id>...]")
    return params


def _endpoints():
    try:
        from nba_api.stats.endpoints import leaguegamefinder, playbyplayv3, videoeventsasset
        from nba_api.stats.library.http import NBAStatsHTTP
        from nba_api.stats.static import teams
    except ImportError as exc:
        raise NbaApiError(
            "the nba_api source needs the `nba_api` package: pip install 'mas-pipeline[nba]' (or nba_api==1.12.0)"
        ) from exc
    return leaguegamefinder, playbyplayv3, videoeventsasset, NBAStatsHTTP, teams


class NbaApiSource:
    """Lists play video URLs for a season / team / game query (see the module docstring)."""

    def __init__(self, query: str, ws: Workspace | None = None, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic):  # fmt: skip
        self.query = query
        self.params = parse_query(query)
        self.ws = ws
        self.sleep, self.clock = sleep, clock
        try:
            self.max_games = int(self.params.get("max_games", 10))
            self.max_plays = int(self.params.get("max_plays", 200))
            self.interval = float(self.params.get("interval_s", 0.6))
            self.retries = int(self.params.get("retries", 3))
            self.backoff = float(self.params.get("backoff_s", 2.0))
            self.timeout = float(self.params.get("timeout_s", 30))
        except ValueError as exc:
            raise NbaApiError(f"nba_api source: {exc} in query {query!r}") from None
        self.actions = {a.strip() for a in self.params.get("actions", "").split(",") if a.strip()}
        self._last_request: float | None = None
        self.requests = 0  # requests sent (retries included), for the log and the tests

    # ------------------------------------------------------------------------------------------------- requests
    @contextlib.contextmanager
    def _stats_url(self, http) -> Iterator[dict | None]:
        """Point nba_api's client at ``MAS_NBA_STATS_URL`` for the listing (its ``base_url``), restoring it after."""
        base = os.environ.get(STATS_URL_ENV, "").strip().rstrip("/")
        if not base:
            yield None
            return
        saved = http.base_url
        http.base_url = base + "/{endpoint}"
        try:  # nba_api's headers name stats.nba.com as the Host; a mirror gets its own
            yield {k: v for k, v in http.headers.items() if k.lower() != "host"}
        finally:
            http.base_url = saved

    def _call(self, factory, what: str, headers: dict | None, **kwargs):
        """One endpoint request through nba_api, spaced ``interval_s`` from the last one, retried with exponential
        backoff on network errors, HTTP 429 / 5xx and unreadable answers; other HTTP errors fail at once."""
        last = ""
        for attempt in range(self.retries + 1):
            if self._last_request is not None:
                wait = self.interval - (self.clock() - self._last_request)
                if wait > 0:
                    self.sleep(wait)
            self._last_request = self.clock()
            self.requests += 1
            endpoint = factory(**kwargs, headers=headers, timeout=self.timeout, get_request=False)
            try:
                endpoint.get_request()
                status = getattr(endpoint.nba_response, "_status_code", 200) or 200
            except Exception as exc:  # noqa: BLE001 - requests' network errors and nba_api's parse errors
                response = getattr(endpoint, "nba_response", None)
                status = getattr(response, "_status_code", None) if response is not None else None
                if status is None or status == 200 or status == 429 or status >= 500:
                    last = f"{type(exc).__name__}: {str(exc)[:200]}" if status in (None, 200) else f"HTTP {status}"
                    if attempt < self.retries:
                        self.sleep(self.backoff * 2**attempt)
                    continue
            if status >= 400:
                if status == 429 or status >= 500:
                    last = f"HTTP {status}"
                    if attempt < self.retries:
                        self.sleep(self.backoff * 2**attempt)
                    continue
                raise NbaApiError(f"stats.nba.com refused {what} (HTTP {status}); it blocks many cloud and data-centre "
                                  "addresses: run from another network, set NBA_API_PROXY, or list the play URLs "
                                  "in a url_file source")  # fmt: skip
            return endpoint
        raise NbaApiError(f"stats.nba.com did not answer {what} after {self.retries + 1} tries ({last}); check the "
                          f"network (or NBA_API_PROXY / {STATS_URL_ENV}), raise retries=, or use a url_file "
                          "source")  # fmt: skip

    # -------------------------------------------------------------------------------------------------- listing
    def _team_id(self, teams) -> str | None:
        team = self.params.get("team")
        if not team:
            return None
        if team.isdigit():
            return team
        found = teams.find_team_by_abbreviation(team.lower())
        if not found:
            raise NbaApiError(f"nba_api source: unknown team {team!r}; use an abbreviation such as LAL or a team id")
        return str(found["id"])

    def game_ids(self, headers: dict | None = None) -> list[str]:
        if self.params.get("game"):
            return [g.strip() for g in self.params["game"].split(",") if g.strip()][: self.max_games]
        leaguegamefinder, _, _, _, teams = _endpoints()
        team_id = self._team_id(teams)
        finder = self._call(leaguegamefinder.LeagueGameFinder, f"the games of {self.query!r}", headers,
                            season_nullable=self.params["season"], team_id_nullable=team_id or "",
                            season_type_nullable=self.params.get("season_type", "Regular Season"),
                            league_id_nullable="00", player_or_team_abbreviation="T")  # fmt: skip
        rows = _rows(finder.get_dict(), "LeagueGameFinderResults", "game list")
        rows.sort(key=lambda r: (str(r.get("GAME_DATE", "")), str(r.get("GAME_ID"))), reverse=True)
        ids: list[str] = []
        for row in rows:
            if str(row["GAME_ID"]) not in ids:
                ids.append(str(row["GAME_ID"]))
        return ids[: self.max_games]

    def plays(self) -> list[Play]:
        """The listed plays (at most ``max_plays``), each recorded in the catalog when a workspace is given."""
        _, playbyplayv3, videoeventsasset, http, _ = _endpoints()
        catalog = Catalog(self.ws) if self.ws is not None else None
        out: list[Play] = []
        with self._stats_url(http) as headers:
            for game_id in self.game_ids(headers):
                pbp = self._call(playbyplayv3.PlayByPlayV3, f"the plays of game {game_id}", headers, game_id=game_id)
                actions = pbp.get_dict().get("game", {}).get("actions")
                if actions is None:
                    raise NbaApiError(f"play-by-play of game {game_id}: unexpected answer (no game.actions)")
                for action in actions:
                    if len(out) >= self.max_plays:
                        return out
                    if not action.get("videoAvailable") or (self.actions and action.get("actionType") not in
                                                            self.actions):  # fmt: skip
                        continue
                    event = int(action["actionNumber"])
                    known = catalog.get("play", f"nba-{game_id}-{event}") if catalog is not None else None
                    if known is not None and known.status == "done" and known.meta.get("url"):
                        out.append(Play(game_id, event, known.meta["url"], known.meta.get("description", ""),
                                        known.meta.get("action_type", "")))  # fmt: skip
                        continue
                    play = self._video(videoeventsasset, headers, game_id, event, action)
                    if play is None:  # listed as having video, but no file yet: skipped (asked again next time)
                        if catalog is not None:
                            catalog.mark_failed("play", f"nba-{game_id}-{event}", "stats.nba.com lists no video "
                                                "file for this play yet", game_id=game_id, event_id=event)  # fmt: skip
                        continue
                    if catalog is not None:
                        catalog.mark_done("play", play.play_id, key=play.url, outputs=[],
                                          meta={"url": play.url, "game_id": game_id, "event_id": event,
                                                "description": play.description, "action_type": play.action_type,
                                                "query": self.query})  # fmt: skip
                    out.append(play)
        return out

    def _video(self, videoeventsasset, headers, game_id: str, event: int, action: dict[str, Any]) -> Play | None:
        asset = self._call(videoeventsasset.VideoEventsAsset, f"the video of play {event} of game {game_id}",
                           headers, game_id=game_id, game_event_id=event)  # fmt: skip
        results = asset.get_dict().get("resultSets")
        if not isinstance(results, dict) or "Meta" not in results:
            raise NbaApiError(f"video of play {event} of game {game_id}: unexpected answer (no resultSets.Meta)")
        urls = results["Meta"].get("videoUrls") or []
        url = next((u[k] for u in urls for k in VIDEO_KEYS if u.get(k)), None)
        if url is None:
            return None
        playlist = results.get("playlist") or [{}]
        description = str(playlist[0].get("dsc") or action.get("description") or "")
        return Play(game_id, event, str(url), description, str(action.get("actionType") or ""))

    def urls(self) -> list[str]:
        return [play.url for play in self.plays()]


def _rows(answer: dict[str, Any], name: str, what: str) -> list[dict[str, Any]]:
    """Rows of result set ``name`` of a legacy stats answer (``resultSets: [{name, headers, rowSet}]``)."""
    for result in answer.get("resultSets") or []:
        if isinstance(result, dict) and result.get("name") == name:
            return [dict(zip(result["headers"], row, strict=False)) for row in result["rowSet"]]
    raise NbaApiError(f"{what}: unexpected answer without result set {name} ({json.dumps(answer)[:200]})")
