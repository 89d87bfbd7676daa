"""fullon_cache's ProcessCache layout, shared by every cache backend: keys, process ids, documents, freshness."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from fullon_ohlcv_service.contract import PROCESS_TYPES, CacheStatus
from fullon_ohlcv_service.redaction import redact_text, redact_value
from fullon_ohlcv_service.timeutil import ms_to_datetime, parse_time

DATA_TTL_S = 86_400  # fullon_cache: process:data:{id} lives one day after its last write
COMPONENTS_KEY = "process:components"
PROCESS_STATUSES: tuple[str, ...] = tuple(s.value for s in CacheStatus)


def data_key(process_id: str) -> str:
    return f"process:data:{process_id}"


def active_key(process_type: str) -> str:
    return f"process:active:{process_type}"


def trade_status_key(exchange: str) -> str:
    return f"TRADE:STATUS:{exchange}"


def now_iso() -> str:
    """fullon_cache's timestamp form: ``datetime.now(UTC).isoformat()``."""
    return datetime.now(UTC).isoformat()


def ms_iso(ts_ms: int) -> str:
    return ms_to_datetime(ts_ms).isoformat()


def check_type(process_type: str) -> str:
    if process_type not in PROCESS_TYPES:
        raise ValueError(f"process type {process_type!r} is not one of {', '.join(PROCESS_TYPES)}")
    return process_type


def check_status(status: str) -> str:
    if status not in PROCESS_STATUSES:
        raise ValueError(f"process status {status!r} is not one of {', '.join(PROCESS_STATUSES)}")
    return status


def new_process_id(process_type: str, component: str) -> str:
    """``{type}:{component}:{epoch seconds as float}`` exactly as fullon_cache builds it."""
    check_type(process_type)
    if not component:
        raise ValueError("component must not be empty")
    return f"{process_type}:{component}:{time.time()}"


def split_process_id(process_id: str) -> tuple[str, str]:
    """(type, component) of an id; the component may itself contain ``:``."""
    head, sep, rest = process_id.partition(":")
    component, sep2, stamp = rest.rpartition(":")
    if not sep or not sep2 or not component or head not in PROCESS_TYPES:
        raise ValueError(f"malformed process id {process_id!r}; expected type:component:epoch")
    try:
        float(stamp)
    except ValueError:
        raise ValueError(f"malformed process id {process_id!r}; expected type:component:epoch") from None
    return head, component


def new_document(
    process_id: str, process_type: str, component: str, params: Mapping[str, Any] | None,
    status: str, message: str, now: str,
) -> dict[str, Any]:
    return {
        "process_id": process_id,
        "process_type": process_type,
        "component": component,
        "params": redact_value(dict(params or {})),
        "status": status,
        "message": redact_text(message),
        "created_at": now,
        "updated_at": now,
        "heartbeat": now,
    }


def merge_document(
    doc: dict[str, Any] | None, process_id: str, status: str | None, message: str | None,
    params: Mapping[str, Any] | None, heartbeat: bool, now: str,
) -> tuple[dict[str, Any], bool]:
    """The Python twin of ``UPDATE_LUA`` (used by the SQLite cache). Returns (doc, recreated)."""
    recreated = doc is None
    if doc is None:
        ptype, component = split_process_id(process_id)
        doc = new_document(process_id, ptype, component, None, "running", "", now)
    if status is not None:
        doc["status"] = status
    if message is not None:
        doc["message"] = redact_text(message)
    if params:
        old = doc.get("params")
        merged = dict(old) if isinstance(old, dict) else {}
        merged.update(redact_value(dict(params)))
        doc["params"] = merged
    doc["updated_at"] = now
    if heartbeat:
        doc["heartbeat"] = now
    return doc, recreated


def is_fresh(iso: str | bytes, now_ms: int, within_s: float) -> bool:
    """True when an active-hash time is within ``within_s`` of now (unparseable: not active)."""
    try:
        text = iso.decode() if isinstance(iso, bytes) else iso
        return now_ms - parse_time(text) <= within_s * 1000
    except (ValueError, UnicodeDecodeError):
        return False


def decode_doc(raw: bytes | str | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def sort_docs(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(docs, key=lambda d: (str(d.get("process_type")), str(d.get("component")), str(d.get("process_id"))))


def active_types(process_type: str | None) -> Sequence[str]:
    return PROCESS_TYPES if process_type is None else (check_type(process_type),)
