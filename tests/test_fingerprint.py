"""The inputs' fingerprints a checkpoint keeps (issue 20, item 3): each changes when its file's content
changes and only then; a resume whose fingerprints differ is refused naming the input."""

from __future__ import annotations

import shutil

import pytest

from arca_sweep.arm_dir import ArmStateError
from arca_sweep.arm_dir.fingerprint import check_same_inputs, file_id, fingerprint
from arca_sweep.model import TINY_PATH
from arca_sweep.testing import make_config


def test_a_model_folder_change_is_seen_and_a_copy_is_not(tmp_path):
    a = tmp_path / "a"
    shutil.copytree(TINY_PATH, a)
    before = fingerprint(make_config(f"model.path={a}"))
    assert any("model.safetensors" in k for k in before) and any("config.json" in k for k in before)
    (a / "tokenizer.json").write_text((a / "tokenizer.json").read_text() + " ")  # not a weights file
    assert fingerprint(make_config(f"model.path={a}")) == before
    with open(a / "model.safetensors", "r+b") as f:  # one byte of the weights flipped
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    after = fingerprint(make_config(f"model.path={a}"))
    changed = check_same_inputs(before, after, tmp_path, accept=True)
    assert len(changed) == 1 and "model.safetensors" in changed[0]
    with pytest.raises(ArmStateError, match="model.safetensors.*accept_changed_inputs=true"):
        check_same_inputs(before, after, tmp_path, accept=False)


def test_large_files_hash_their_edges_and_size(tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(b"\0" * (70 * 2**20))
    first = file_id(big)
    with open(big, "r+b") as f:
        f.seek(35 * 2**20)  # the middle of a file past 64 MiB is not read
        f.write(b"\1")
    assert file_id(big) == first
    with open(big, "ab") as f:
        f.write(b"\0")
    assert file_id(big) != first


def test_packaged_plugins_and_an_old_checkpoint_are_not_compared(tmp_path):
    cfg = make_config("data=jsonl")  # the packaged rows and reward: the package's own, not fingerprinted
    assert not any(k.startswith("data.reward") for k in fingerprint(cfg))
    assert check_same_inputs(None, fingerprint(cfg), tmp_path, accept=False) == []
