"""The lab inbox against what people and other programs actually leave in a folder."""

from __future__ import annotations

import os
import time

from tests.oracles.test_lab_validation import body, good_row, make_lab_run
from xtalforge.oracles.lab.files import process_inbox

HEADER = "candidate_id,band_gap,made,lattice_a\n"


def _age(path, seconds: float = 3600.0) -> None:
    """Pretend `path` was last written `seconds` ago."""
    t = time.time() - seconds
    os.utime(path, (t, t), follow_symlinks=False)


def test_a_file_name_that_is_not_utf8_is_taken_and_its_label_stored(tmp_path):
    _cfg, store, run, cands, _lab = make_lab_run(tmp_path)
    inbox = os.fsencode(run / "lab" / "inbox")
    good = os.path.join(inbox, b"r\xe9sultats.json")  # a Latin-1 name from another system
    bad = os.path.join(inbox, b"\xff\xfe.csv")
    with open(good, "w") as fh:
        fh.write(body(good_row(cands[0].id)))
    with open(bad, "w") as fh:
        fh.write(HEADER + f"{cands[1].id},-1,yes,5\n")
    for p in (good, bad):
        _age(p)

    out = process_inbox(store, "lab", run / "lab" / "inbox")

    by_state = {o.summary().split(":")[0]: dest for dest, o in out}
    assert set(by_state) == {"accepted", "rejected"}
    assert store.measured_ids("lab") == {cands[0].id}
    labels = sorted(s["label"] for s in store.lab_submissions("lab"))
    assert labels == ["\\xff\\xfe.csv", "r\\xe9sultats.json"]
    assert (run / "lab" / "inbox" / "processed" / "r_sultats.json").is_file()
    assert (run / "lab" / "inbox" / "rejected" / "__.csv.errors.txt").is_file()
    assert os.listdir(inbox) == [] or set(os.listdir(inbox)) == {b"processed", b"rejected"}


def test_a_half_written_file_waits_until_it_is_complete(tmp_path):
    _cfg, store, run, cands, _lab = make_lab_run(tmp_path)
    inbox = run / "lab" / "inbox"
    f = inbox / "results.csv"
    f.write_text(f"candidate_id,made,lattice_a,band_gap\n{cands[0].id},yes,5.6,0.1")  # paused mid-number

    [(_, first)] = process_inbox(store, "lab", inbox)
    assert first.state == "waiting" and "results.csv" in first.summary()
    _age(f, 120)  # a long pause: unchanged for minutes, but it still ends mid-line
    [(_, paused)] = process_inbox(store, "lab", inbox)
    assert paused.state == "waiting" and "mid-line" in paused.note
    assert store.measured_ids("lab") == set() and store.lab_submissions("lab") == []

    with open(f, "a") as fh:  # the writer finishes: 0.15, and the line ends
        fh.write("5\n")
    [(_, fresh)] = process_inbox(store, "lab", inbox)
    assert fresh.state == "waiting"  # just changed: not yet
    _age(f, 30)  # then left alone
    [(dest, done)] = process_inbox(store, "lab", inbox)
    assert done.accepted and dest.parent.name == "processed"
    [m] = store.measurements(oracle="lab")
    assert m.values["band_gap"] == 0.15


def test_a_done_marker_makes_a_file_complete_at_once(tmp_path):
    _cfg, store, run, cands, _lab = make_lab_run(tmp_path)
    inbox = run / "lab" / "inbox"
    (inbox / "a.json").write_text(body(good_row(cands[0].id)))
    (inbox / "a.json.done").write_text("")
    [(dest, out)] = process_inbox(store, "lab", inbox)
    assert out.accepted and dest == inbox / "processed" / "a.json"
    assert not (inbox / "a.json.done").exists()


def test_entries_not_read_are_reported_and_a_hard_link_is_refused(tmp_path):
    _cfg, store, run, cands, _lab = make_lab_run(tmp_path)
    inbox = run / "lab" / "inbox"
    outside = tmp_path / "elsewhere.json"  # a file that is not the lab's to hand in
    outside.write_text(body(good_row(cands[0].id)))
    os.link(outside, inbox / "linked.json")
    (inbox / "sym.json").symlink_to(outside)
    os.mkfifo(inbox / "pipe.csv")
    (inbox / "folder.json").mkdir()
    (inbox / "notes.txt").write_text("call the lab on Monday")
    (inbox / ".b.json.tmp").write_text("{")
    for p in inbox.iterdir():
        _age(p)

    out = {dest.name: o for dest, o in process_inbox(store, "lab", inbox)}

    assert store.measured_ids("lab") == set()
    assert set(out) == {"linked.json", "sym.json", "pipe.csv", "folder.json", "notes.txt", ".b.json.tmp"}
    assert not any(o.accepted for o in out.values())
    assert "hard link" in out["linked.json"].summary()
    assert "symbolic link" in out["sym.json"].summary()
    assert "not a regular file" in out["pipe.csv"].summary()
    assert out[".b.json.tmp"].state == "waiting"
    assert {o.state for k, o in out.items() if k != ".b.json.tmp"} == {"skipped"}
    assert outside.read_text() == body(good_row(cands[0].id))  # the link's target is untouched
