"""Tests of :mod:`fashion_attr.checkpoint`: round trip, RNG capture, and refusal of code."""

from __future__ import annotations

import io
import os
import pickle
import re
from pathlib import Path

import pytest
import torch
from fashion_attr.checkpoint import (
    CorruptArtifactError,
    UnsafeArtifactError,
    capture_rng,
    load_artifact,
    restore_rng,
    save_artifact,
)

COMPONENTS = Path(__file__).resolve().parents[1] / "components"


def test_round_trip_keeps_tensors_and_plain_data(tmp_path: Path) -> None:
    obj = {
        "w": torch.arange(6, dtype=torch.float32).reshape(2, 3),
        "ids": torch.tensor([1, 2, 3], dtype=torch.int64),
        "step": 7,
        "names": ["a", "b"],
        "nested": {"lr": 0.01, "flag": True, "none": None, "pair": (1, 2)},
    }
    uri = tmp_path / "sub" / "checkpoint.pt"
    save_artifact(uri, obj)
    back = load_artifact(uri)
    assert torch.equal(back["w"], obj["w"]) and back["w"].dtype == torch.float32
    assert torch.equal(back["ids"], obj["ids"])
    assert back["step"] == 7 and back["names"] == ["a", "b"]
    assert back["nested"] == {"lr": 0.01, "flag": True, "none": None, "pair": (1, 2)}
    # The write is atomic: no temp file is left beside the target.
    assert sorted(p.name for p in uri.parent.iterdir()) == ["checkpoint.pt"]


def test_round_trip_of_a_model_and_optimizer_state(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    save_artifact(tmp_path / "c.pt", {"model": model.state_dict(), "opt": opt.state_dict()})
    state = load_artifact(tmp_path / "c.pt")
    other = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    other.load_state_dict(state["model"])
    for a, b in zip(model.state_dict().values(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    opt2 = torch.optim.SGD(other.parameters(), lr=0.1, momentum=0.9)
    opt2.load_state_dict(state["opt"])
    buf = opt2.state_dict()["state"][0]["momentum_buffer"]
    assert torch.equal(buf, opt.state_dict()["state"][0]["momentum_buffer"])


def test_round_trip_on_s3(s3_server) -> None:
    uri = s3_server.uri("run/checkpoint.pt")
    save_artifact(uri, {"x": torch.ones(2), "step": 3})
    back = load_artifact(uri)
    assert back["step"] == 3 and torch.equal(back["x"], torch.ones(2))


def test_missing_file_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_artifact(tmp_path / "nope.pt")


class _Exploit:
    """Unpickling this runs ``os.system`` (writes a marker file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"echo pwned > '{self.marker}'",))


class _WriteMarker:
    """Unpickling this calls ``Path.write_text`` (no shell needed)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))


@pytest.mark.parametrize("payload", [_Exploit, _WriteMarker])
@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_malicious_pickle_is_refused_and_never_runs(
    tmp_path: Path, payload: type, writer: str
) -> None:
    marker = tmp_path / "marker.txt"
    evil = {"state_dict": {"w": torch.zeros(1)}, "payload": payload(marker)}
    path = tmp_path / "model.pt"
    if writer == "torch.save":
        buffer = io.BytesIO()
        torch.save(evil, buffer)
        path.write_bytes(buffer.getvalue())
    else:
        path.write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(UnsafeArtifactError, match="refused to load") as info:
        load_artifact(path)
    assert str(path) in str(info.value) and "Fix:" in str(info.value)
    assert not marker.exists()
    # Sanity: the same file *does* run code with an unsafe load (so the test can fail).
    if writer == "pickle":
        pickle.loads(path.read_bytes())
        assert marker.exists()


def test_exported_loaders_refuse_malicious_files(tmp_path: Path) -> None:
    from fashion_attr.classifier.export import load_exported_model
    from fashion_attr.gan.export import load_generator

    marker = tmp_path / "marker.txt"
    path = tmp_path / "generator.pt"
    buffer = io.BytesIO()
    torch.save({"format": "fashion_attr.generator/v1", "x": _Exploit(marker)}, buffer)
    path.write_bytes(buffer.getvalue())
    with pytest.raises(UnsafeArtifactError):
        load_generator(str(path))
    with pytest.raises(UnsafeArtifactError):
        load_exported_model(str(path))
    assert not marker.exists()


class _Plain:
    """A harmless class: still code, not data, for a checkpoint."""


def _saved(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _damaged(kind: str) -> bytes:
    good = _saved({"w": torch.arange(64, dtype=torch.float32), "step": 3})
    if kind == "empty":
        return b""
    if kind == "truncated":
        return good[: len(good) // 2]
    if kind == "random":
        return bytes(torch.randint(0, 256, (4000,), generator=torch.Generator().manual_seed(0)))
    if kind == "text":
        return b"version https://git-lfs.github.com/spec/v1\n"  # a Git LFS pointer
    if kind == "plain-pickle":
        return pickle.dumps({"w": [1.0, 2.0]})
    if kind == "bit-flip":
        i = good.index(b"data.pkl") + 40  # inside the pickled state, past the member header
        return good[:i] + bytes([good[i] ^ 0xFF]) + good[i + 1 :]
    if kind == "crafted":
        return _saved({"w": torch.zeros(1), "extra": _Plain()})
    raise AssertionError(kind)


@pytest.mark.parametrize(
    ("kind", "error", "diagnosis"),
    [
        ("empty", CorruptArtifactError, "empty (0 bytes"),
        ("truncated", CorruptArtifactError, "truncated ("),
        ("random", CorruptArtifactError, "not a torch file"),
        ("text", CorruptArtifactError, "not a torch file"),
        ("plain-pickle", CorruptArtifactError, "not a torch file"),
        ("bit-flip", CorruptArtifactError, "fails its checksum"),
        ("crafted", UnsafeArtifactError, "unsafe (it references"),
    ],
)
def test_an_unreadable_file_gets_the_right_diagnosis_and_never_the_unsafe_advice(
    kind: str, error: type, diagnosis: str, tmp_path: Path
) -> None:
    from fashion_attr.steps.contract import exit_code_for

    path = tmp_path / "checkpoint.pt"
    path.write_bytes(_damaged(kind))
    with pytest.raises(error) as info:
        load_artifact(path)
    text = str(info.value)
    assert diagnosis in info.value.diagnosis and text.startswith(f"{path}: ")
    assert "Fix:" in text and "\n" not in text
    assert "weights_only" not in text and "trusted source" not in text
    assert exit_code_for(info.value) == 2  # another file is the fix, not a retry
    if error is UnsafeArtifactError:
        assert "refused to load (for safety)" in text and "_Plain" in text


def test_rng_capture_and_restore_replays_the_same_draws() -> None:
    gen = torch.Generator().manual_seed(5)
    torch.manual_seed(1)
    torch.rand(3)
    torch.rand(3, generator=gen)
    state = capture_rng(gen)
    first = (torch.rand(4), torch.rand(4, generator=gen))
    torch.manual_seed(99)
    gen.manual_seed(99)
    restore_rng(state, gen)
    second = (torch.rand(4), torch.rand(4, generator=gen))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    with pytest.raises(ValueError, match="different configuration"):
        restore_rng(state)  # one generator saved, none given


def test_rng_state_survives_an_artifact_round_trip(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(3)
    state = capture_rng(gen)
    save_artifact(tmp_path / "rng.pt", {"rng": state})
    expected = torch.rand(5, generator=gen)
    restore_rng(load_artifact(tmp_path / "rng.pt")["rng"], gen)
    assert torch.equal(torch.rand(5, generator=gen), expected)


def test_every_torch_load_in_components_is_weights_only() -> None:
    """Grep the source tree: a torch.load without weights_only=True could run code."""
    files = sorted(COMPONENTS.rglob("*.py"))
    assert len(files) > 20
    calls = 0
    for path in files:
        text = path.read_text()
        for match in re.finditer(r"torch\.load\(", text):
            line = text.count("\n", 0, match.start()) + 1
            line_text = text.splitlines()[line - 1]
            if line_text.lstrip().startswith("#") or "``" in line_text:
                continue  # a comment or docstring mention, not a call
            # The call's arguments: up to the matching parenthesis.
            depth, end = 0, match.end() - 1
            for end in range(match.end() - 1, len(text)):
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                if depth == 0:
                    break
            args = text[match.end() : end]
            calls += 1
            assert re.search(r"weights_only\s*=\s*True", args), (
                f"{path.relative_to(COMPONENTS)}:{line}: torch.load without weights_only=True"
            )
        # Plain pickle loads of artifacts are never allowed either.
        assert not re.search(r"\bpickle\.loads?\(", text), f"{path}: pickle.load"
    assert calls >= 2  # checkpoint.load_artifact and the pretrained-weights loader


def test_check_world_size_refuses_another_number_of_ranks() -> None:
    from fashion_attr.checkpoint import check_world_size

    state = {"samples_consumed": [8, 8]}
    check_world_size(state, 2, "out/checkpoint.pt")
    with pytest.raises(ValueError, match=r"2 process\(es\); this run has 1") as info:
        check_world_size(state, 1, "out/checkpoint.pt")
    assert "out/checkpoint.pt" in str(info.value)
    assert "--nproc_per_node 2" in str(info.value) and "--no-resume" in str(info.value)
