"""The one record of inputs (moofa/fingerprint.py): Inputs, assess's verdicts, resolve's policies."""
from __future__ import annotations

import json

import pytest

from moofa.errors import CheckpointError, MoofaInputError
from moofa.fingerprint import (
    UNRECORDED_MESSAGE,
    Inputs,
    Policy,
    Verdict,
    assess,
    change_message,
    file_fingerprint,
    move_aside,
    read_fingerprint,
    resolve,
    write_fingerprint,
)

IMAGES = {"train": {"n": 3, "bytes": 30, "sha256": "a" * 64}}


def _inputs(epochs: int = 3, **data) -> Inputs:
    return Inputs.of({"epochs": epochs, "data": {"dataset": "tiny", **data}})


def test_assess_gives_each_verdict():
    assert assess(None, _inputs()) is Verdict.FRESH
    assert assess(_inputs(), _inputs()) is Verdict.REUSABLE
    assert assess(_inputs(3), _inputs(5)) is Verdict.STALE
    # an existing result that records nothing matches nothing
    assert assess(Inputs.unrecorded(), _inputs()) is Verdict.STALE
    assert assess(Inputs.of({}), _inputs()) is Verdict.STALE


def test_an_older_result_without_images_is_reusable_unless_another_input_changed():
    old, new = _inputs(), _inputs(images=IMAGES)
    assert old.lacks_images(new) and not new.lacks_images(new)
    assert not Inputs.unrecorded().lacks_images(new)
    assert old.comparable(new) == _inputs() and new.comparable(new) is new
    assert assess(old, new) is Verdict.REUSABLE
    assert assess(old, _inputs(5, images=IMAGES)) is Verdict.STALE
    # once recorded, other images are a change
    other = _inputs(images={"train": dict(IMAGES["train"], n=4)})
    assert assess(new, other) is Verdict.STALE


def test_inputs_are_json_normalised_and_compare_by_content_not_path(tmp_path):
    f = tmp_path / "w.bin"
    f.write_bytes(b"x" * 10)
    fp = file_fingerprint(f)
    assert Inputs.of({"sizes": (1, 2), 3: "k"}).fields == {"sizes": [1, 2], "3": "k"}
    moved = Inputs.of({"w": dict(fp, path="/elsewhere/w.bin")})
    assert assess(Inputs.of({"w": fp}), moved) is Verdict.REUSABLE
    assert Inputs.of({"a": 1, "previous": 2}).without("previous") == Inputs.of({"a": 1})
    f.write_bytes(b"y" * 10)
    diffs = Inputs.of({"w": fp}).differences(Inputs.of({"w": file_fingerprint(f)}))
    assert len(diffs) == 1 and diffs[0].startswith(f"w ({f}): sha256 '") and diffs[0].count("...") == 2


def test_refuse_raises_one_line_naming_file_and_change(tmp_path):
    with pytest.raises(MoofaInputError) as err:
        resolve("the x records", _inputs(3), _inputs(5), Policy.REFUSE, file=tmp_path / "x.jsonl",
                restart="rerun with --overwrite")
    assert type(err.value) is MoofaInputError
    text = str(err.value)
    assert "\n" not in text and str(tmp_path / "x.jsonl") in text
    assert "the x records was computed from other inputs (epochs 3 -> 5); rerun with --overwrite" in text
    # the site's error class, and the message of a result that records nothing
    with pytest.raises(CheckpointError, match=r"\(" + UNRECORDED_MESSAGE.replace("(", r"\(").replace(")", r"\)")):
        resolve("the phase", Inputs.unrecorded(), _inputs(), Policy.REFUSE, error=CheckpointError)


def test_refuse_and_redo_pass_fresh_and_reusable_results():
    for policy in Policy:
        assert resolve("r", None, _inputs(), policy).verdict is Verdict.FRESH
        out = resolve("r", _inputs(), _inputs(), policy)
        assert out.verdict is Verdict.REUSABLE and out.reuse and out.moved_to is None


def test_redo_leaves_a_stale_result_to_be_overwritten(tmp_path):
    out = resolve("r", _inputs(3), _inputs(5), Policy.REDO, file=tmp_path / "info.json")
    assert out.verdict is Verdict.STALE and not out.reuse and out.moved_to is None


def test_move_aside_renames_a_stale_result_to_the_first_free_sibling(tmp_path):
    folder = tmp_path / "finetuned"
    (tmp_path / "finetuned.previous-1").mkdir()
    folder.mkdir()
    (folder / "inputs.json").write_text("{}")
    out = resolve("r", _inputs(3), _inputs(5), Policy.MOVE_ASIDE, file=folder / "inputs.json", result=folder)
    assert out.verdict is Verdict.STALE and out.moved_to == tmp_path / "finetuned.previous-2"
    assert not folder.exists() and (out.moved_to / "inputs.json").read_text() == "{}"
    # a reusable result stays where it is
    folder.mkdir()
    assert resolve("r", _inputs(), _inputs(), Policy.MOVE_ASIDE, result=folder).moved_to is None
    assert folder.is_dir() and move_aside(folder) == tmp_path / "finetuned.previous-3"


def test_change_message_shows_three_changes_and_counts_the_rest():
    old = Inputs.of({k: 0 for k in "abcde"})
    new = Inputs.of({k: 1 for k in "abcde"})
    assert change_message("it", old, new, "redo it") == (
        "it was computed from other inputs (a 0 -> 1; b 0 -> 1; c 0 -> 1; and 2 more); redo it")


def test_fingerprint_sidecar_round_trip(tmp_path):
    side = tmp_path / "d.recipe.json"
    write_fingerprint(side, Inputs.of({"sizes": (1, 2)}), phase="kernel_1")
    assert json.loads(side.read_text()) == {"fingerprint": {"sizes": [1, 2]}, "phase": "kernel_1"}
    assert read_fingerprint(side) == Inputs.of({"sizes": [1, 2]})
    side.write_text('{"fingerprint": "abc"}')
    assert read_fingerprint(side) is None
    side.write_text("{trunc")
    assert read_fingerprint(side) is None and read_fingerprint(tmp_path / "none.json") is None
