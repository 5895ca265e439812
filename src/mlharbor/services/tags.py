"""Tag storage shared by both services (Rekognition speaks maps, Comprehend lists of Key/Value)."""

from __future__ import annotations

from sqlalchemy import Connection, delete, func, insert, select, update

from mlharbor.store.tables import tags


def get(conn: Connection, arn: str) -> dict[str, str]:
    rows = conn.execute(select(tags.c.tag_key, tags.c.tag_value).where(tags.c.resource_arn == arn))
    return {key: value for key, value in rows}


def count_after(conn: Connection, arn: str, new: dict[str, str]) -> int:
    existing = set(get(conn, arn))
    return len(existing | set(new))


def put(conn: Connection, arn: str, new: dict[str, str]) -> None:
    existing = get(conn, arn)
    for key, value in new.items():
        if key in existing:
            conn.execute(
                update(tags).where(tags.c.resource_arn == arn, tags.c.tag_key == key).values(tag_value=value)
            )
        else:
            conn.execute(insert(tags).values(resource_arn=arn, tag_key=key, tag_value=value))


def remove(conn: Connection, arn: str, keys: list[str]) -> None:
    if keys:
        conn.execute(delete(tags).where(tags.c.resource_arn == arn, tags.c.tag_key.in_(keys)))


def remove_all(conn: Connection, arn: str) -> None:
    conn.execute(delete(tags).where(tags.c.resource_arn == arn))


def count(conn: Connection, arn: str) -> int:
    return conn.execute(select(func.count()).select_from(tags).where(tags.c.resource_arn == arn)).scalar_one()
