"""The lake summary an analyst starts with: table sizes, time span, engagement, heavy tails, cold videos,
top hashtags, and once a snapshot is live the README's analysis queries, run on a freshly rebuilt warehouse
(the file ``duckdb -readonly data/warehouse.duckdb`` opens too)."""

from __future__ import annotations

import duckdb

from rec_core.data.warehouse import ANALYSIS_QUERIES, build_warehouse
from rec_core.settings import Settings

QUERIES: dict[str, str] = {
    "Tables": """
        SELECT 'videos' AS "table", count(*) AS "rows" FROM videos
        UNION ALL SELECT 'users', count(*) FROM users
        UNION ALL SELECT 'follows', count(*) FROM follows
        UNION ALL SELECT 'interactions', count(*) FROM interactions
        UNION ALL SELECT 'creators', count(DISTINCT creator_id) FROM videos""",
    "Time span": """
        SELECT min(ts) AS first_interaction, max(ts) AS last_interaction,
               date_diff('day', min(ts), max(ts)) AS days
        FROM interactions""",
    "Engagement": """
        SELECT round(avg(completion), 3) AS avg_completion, round(avg(watch_time_s), 1) AS avg_watch_s,
               round(avg(liked::INT), 4) AS like_rate, round(avg(shared::INT), 4) AS share_rate,
               round(avg(commented::INT), 4) AS comment_rate
        FROM interactions""",
    "Activity per user (heavy tail)": """
        WITH per_user AS (SELECT user_id, count(*) AS n FROM interactions GROUP BY user_id)
        SELECT quantile_cont(n, 0.5)::INT AS p50, quantile_cont(n, 0.9)::INT AS p90,
               quantile_cont(n, 0.99)::INT AS p99, max(n) AS max,
               round(sum(n) FILTER (WHERE n >= (SELECT quantile_cont(n, 0.9) FROM per_user))
                     / sum(n), 3) AS top10pct_share
        FROM per_user""",
    "Popularity (power law)": """
        WITH per_video AS (SELECT video_id, count(*) AS n FROM interactions GROUP BY video_id),
             ranked AS (SELECT n, row_number() OVER (ORDER BY n DESC) AS r, count(*) OVER () AS total FROM per_video)
        SELECT round(sum(n) FILTER (WHERE r <= total * 0.01) / sum(n), 3) AS top1pct_share,
               round(sum(n) FILTER (WHERE r <= total * 0.10) / sum(n), 3) AS top10pct_share
        FROM ranked""",
    "Cold videos (posted after the last interaction)": """
        SELECT count(*) AS cold_videos FROM videos WHERE created_at > (SELECT max(ts) FROM interactions)""",
    "Top hashtags": """
        SELECT tag, count(*) AS videos FROM (SELECT unnest(hashtags) AS tag FROM videos)
        GROUP BY tag ORDER BY videos DESC LIMIT 10""",
}


def summarize(settings: Settings) -> dict[str, list[tuple]]:
    """Rebuild the warehouse and run every summary query on it: title -> [column names, *rows]."""
    path = build_warehouse(settings.paths, settings.batch)
    con = duckdb.connect(str(path), read_only=True)
    try:
        out: dict[str, list[tuple]] = {}
        tables = {row[0] for row in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        # Once a snapshot is live, the analysis queries of the README run too.
        queries = {**QUERIES, **(ANALYSIS_QUERIES if "feeds" in tables else {})}
        for title, sql in queries.items():
            result = con.execute(sql)
            columns = [d[0] for d in result.description]
            out[title] = [tuple(columns), *result.fetchall()]
        return out
    finally:
        con.close()


def format_results(results: dict[str, list[tuple]]) -> str:
    """The results as aligned plain-text tables under Markdown titles."""
    lines: list[str] = []
    for title, rows in results.items():
        lines.append(f"\n## {title}")
        widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
        for j, row in enumerate(rows):
            lines.append("  " + "  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)))
            if j == 0:
                lines.append("  " + "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def rebuild_warehouse(settings: Settings) -> dict[str, str]:
    """Rebuild the warehouse over the live lake and snapshot (after a publish); returns its path."""
    return {"warehouse": str(build_warehouse(settings.paths, settings.batch))}
