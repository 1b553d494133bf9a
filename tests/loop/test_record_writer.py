"""Round records written in the background: in round order, without holding a round up."""

import threading
from concurrent.futures import ThreadPoolExecutor

from xtalforge.loop.report import RecordWriter, RoundRecord


class GatedWriter(RecordWriter):
    """Writes wait for `gate`: a write that takes as long as the test says."""

    def __init__(self):
        super().__init__(progress=False)
        self.gate = threading.Event()
        self.written: list[int] = []

    def _write(self, rec: RoundRecord) -> None:
        self.gate.wait()
        self.written.append(rec.round)


def record(r: int, tmp_path) -> RoundRecord:
    return RoundRecord(round=r, folder=tmp_path, rows=[], top_k=0, plots={}, summary={}, config=None)


def test_rounds_do_not_wait_for_the_write_before_and_files_come_in_order(tmp_path):
    w = GatedWriter()
    with ThreadPoolExecutor(3) as pool:
        w.background = pool
        rounds_ended = threading.Event()

        def two_rounds():  # end of round r, then the next round's pick and flush
            for r in range(2):
                w.record(record(r, tmp_path), later=True)
                w.flush()
            rounds_ended.set()

        threading.Thread(target=two_rounds, daemon=True).start()
        assert rounds_ended.wait(10), "a round waited for the write of the round before"
        assert w.written == []
        w.gate.set()
        for r in range(2, 5):
            w.record(record(r, tmp_path), later=True)
            w.flush()
        w.flush(wait=True)
    assert w.written == [0, 1, 2, 3, 4]


def test_without_a_background_executor_records_are_written_at_once(tmp_path):
    w = GatedWriter()
    w.gate.set()
    w.record(record(0, tmp_path), later=True)
    assert w.written == [0]
