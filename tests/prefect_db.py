"""Read a finished project's Prefect database (its own PREFECT_HOME): no server needed."""

from pathlib import Path


def latest_flow_run(project: Path) -> dict:
    """The newest flow run in the project's Prefect database: state, its message, its Markdown artifact."""
    import json
    import sqlite3

    with sqlite3.connect(project / ".prefect" / "prefect.db") as db:
        fr_id, state_type, message = db.execute(
            "select fr.id, fr.state_type, s.message from flow_run fr join flow_run_state s on s.id = fr.state_id "
            "order by fr.created desc limit 1").fetchone()
        arts = db.execute("select key, data, description from artifact where flow_run_id = ? and type = 'markdown'",
                          (fr_id,)).fetchall()
    return {"state": state_type, "message": message or "",
            "artifacts": {k: {"markdown": json.loads(d) if d and d.startswith('"') else d, "description": desc}
                          for k, d, desc in arts}}


def flow_run_count(project: Path) -> int:
    """How many flow runs the project's Prefect database holds."""
    import sqlite3

    with sqlite3.connect(project / ".prefect" / "prefect.db") as db:
        return db.execute("select count(*) from flow_run").fetchone()[0]
