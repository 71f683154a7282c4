"""What a run reads besides its config, fingerprinted so a resume cannot quietly mix inputs.

The config names a data file, a plug-in or a model folder; their content can change under the same name
between a run's interruption and its resumption (a rewritten ``rows.jsonl``, an edited reward module, a
re-converted model). :func:`fingerprint` gives each such input one short string (size and sha256); the
checkpoint keeps them, and a resume whose fingerprints differ is refused, naming what changed
(:func:`check_same_inputs`), unless ``accept_changed_inputs=true``.

Inputs: ``data.path`` and ``data.eval_path`` (each file's size and sha256); ``credit.target`` and
``data.reward`` (the source file of the plug-in's module, unless it is one of arca-sweep's own modules, which
change only with the package's version); ``model.path`` (``config.json`` and each weights file: size and the
sha256 of its first and last 8 MiB, so a 60 GB folder costs no more than a small one); a packaged model's
converted weights (their recorded sha256).
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

from arca_sweep.arm_dir.files import ArmStateError

_EDGE = 8 * 2**20  # bytes hashed at each end of a large file
_WHOLE = 64 * 2**20  # files up to this size are hashed whole
_PACKAGE = Path(__file__).resolve().parents[1]


def file_id(path: Path) -> str:
    """``size <n> sha256 <hex16>`` of the whole file, or of its first and last 8 MiB past 64 MiB."""
    size = path.stat().st_size
    h = hashlib.sha256()
    with path.open("rb") as f:
        if size <= _WHOLE:
            for block in iter(lambda: f.read(2**20), b""):
                h.update(block)
        else:
            h.update(f.read(_EDGE))
            f.seek(size - _EDGE)
            h.update(f.read(_EDGE))
    return f"size {size} sha256 {h.hexdigest()[:16]}"


def _module_file(spec: str | None) -> Path | None:
    """The source file of ``pkg.mod`` in ``pkg.mod:fn``, found without importing it; None for a module of
    arca-sweep itself or one without a file."""
    if not spec or ":" not in spec:
        return None
    try:
        found = importlib.util.find_spec(spec.split(":")[0])
    except (ImportError, ValueError):
        return None
    origin = Path(found.origin).resolve() if found is not None and found.origin else None
    if origin is None or not origin.is_file() or origin.is_relative_to(_PACKAGE):
        return None
    return origin


def fingerprint(cfg) -> dict[str, str]:
    """``{input: id}`` for every input of the config ``cfg`` that is a local file (see the module docstring)."""
    out: dict[str, str] = {}
    data = cfg.data
    sources = [("data", data, ("path", "eval_path"))]
    sets = (cfg.get("eval") or {}).get("sets") or {}
    sources += [(f"eval.sets.{name}", d, ("path", "eval_path")) for name, d in sets.items()]
    for prefix, d, keys in sources:
        for key in keys:
            value = d.get(key)
            if value and Path(value).expanduser().is_file():
                out[f"{prefix}.{key} ({value})"] = file_id(Path(value).expanduser())
        if prefix != "data" and (source := _module_file(d.get("reward"))) is not None:
            out[f"{prefix}.reward ({source})"] = file_id(source)
    for key, spec in (("credit.target", cfg.credit.get("target")), ("data.reward", data.get("reward"))):
        if (source := _module_file(spec)) is not None:
            out[f"{key} ({source})"] = file_id(source)
    model = cfg.model
    if model.get("path"):
        folder = Path(model.path).expanduser()
        files = [folder / "config.json"] + sorted(
            p for p in folder.glob("*") if p.suffix in (".safetensors", ".bin", ".gguf", ".pt")
        )
        for p in files:
            if p.is_file():
                out[f"model.path ({p})"] = file_id(p)
    elif model.get("package"):
        from arca_sweep.model import model_weights

        try:
            sha = model_weights(model).get("model/weights_sha256")
        except Exception:  # not converted yet, or from the hub: the model load says more
            sha = None
        if sha:
            out[f"model {model.name} (converted weights)"] = f"sha256 {sha[:16]}"
    return out


def check_same_inputs(saved: dict | None, current: dict[str, str], out_dir: Path, accept: bool) -> list[str]:
    """The inputs whose fingerprint differs from the checkpoint's (``saved``; None: a checkpoint written
    before fingerprints, nothing to compare). Refused with an :class:`ArmStateError` naming them unless
    ``accept``; then returned, for a warning and the record."""
    if saved is None:
        return []
    changed = sorted(
        f"{k}: {'absent' if k not in saved else saved[k]} then, {current.get(k, 'absent')} now"
        for k in saved.keys() | current.keys()
        if saved.get(k) != current.get(k)
    )
    if changed and not accept:
        raise ArmStateError(
            f"{out_dir}: the checkpoint was taken with other inputs than this run would read "
            f"({'; '.join(changed)}); resuming would train the rest of the arm on them without a word in "
            "its record. Restore the files it ran with, or use another output dir; to resume on the "
            "changed inputs anyway, add accept_changed_inputs=true (the change is then written to the record)."
        )
    return changed
