"""Read an offline W&B run file (``run-<id>.wandb``) without a server: it is a LevelDB-style log
(32 KiB blocks, 7-byte record headers: crc32, length, type) of ``wandb_internal_pb2.Record``s."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list:
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    out, pos, pending = [], 7, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        payload, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == FULL:
            out.append(payload)
        elif kind == FIRST:
            pending = payload
        elif kind in (MIDDLE, LAST):
            pending += payload
            if kind == LAST:
                out.append(pending)
    parsed = []
    for payload in out:
        r = pb.Record()
        r.ParseFromString(payload)
        parsed.append(r)
    return parsed


def _key(item) -> str:
    """An item's key: ``key``, or (newer W&B clients) its ``nested_key`` path joined with dots."""
    return item.key or ".".join(item.nested_key)


def run_view(path: Path) -> dict:
    """The run's id, group, name, tags, job type, config and final summary, as plain values."""
    view = {"config": {}, "summary": {}, "history_steps": []}
    for r in records(path):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            view.update(
                id=r.run.run_id,
                group=r.run.run_group,
                name=r.run.display_name,
                tags=list(r.run.tags),
                job_type=r.run.job_type,
            )
            view["config"].update({u.key: json.loads(u.value_json) for u in r.run.config.update})
        elif kind == "config":
            view["config"].update({u.key: json.loads(u.value_json) for u in r.config.update})
        elif kind == "summary":
            view["summary"].update({_key(u): json.loads(u.value_json) for u in r.summary.update})
        elif kind == "history":
            items = {_key(i): i.value_json for i in r.history.item}
            if "step" in items:
                view["history_steps"].append(json.loads(items["step"]))
    return view
