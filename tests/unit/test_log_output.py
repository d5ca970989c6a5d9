"""Log output: lines are written in batches, in order, none lost on close; the text format is
the standard one."""

from __future__ import annotations

import io
import logging
import time

from scheduler_host.telemetry import BatchedLineHandler, TextFormatter


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def _logger(handler: logging.Handler, name: str) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


def test_info_lines_wait_for_the_interval_and_go_out_in_one_write() -> None:
    stream = CountingStream()
    handler = BatchedLineHandler(stream, interval=0.3)
    log = _logger(handler, "batching.info")
    try:
        for n in range(50):
            log.info("call %d", n)
        assert stream.getvalue() == ""
        deadline = time.monotonic() + 5
        while not stream.getvalue() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert stream.getvalue().splitlines() == [f"call {n}" for n in range(50)]
        assert stream.writes == 1
    finally:
        handler.close()


def test_a_warning_is_written_at_once_after_the_lines_before_it() -> None:
    stream = CountingStream()
    handler = BatchedLineHandler(stream, interval=60)
    log = _logger(handler, "batching.warning")
    try:
        log.info("first")
        log.warning("trouble")
        assert stream.getvalue().splitlines() == ["first", "trouble"]
    finally:
        handler.close()


def test_a_full_buffer_is_written_without_waiting() -> None:
    stream = CountingStream()
    handler = BatchedLineHandler(stream, interval=60, max_bytes=100)
    log = _logger(handler, "batching.full")
    try:
        for n in range(20):
            log.info("line %02d", n)  # 8 bytes a line: the 13th reaches 100
        assert stream.writes == 1
        assert stream.getvalue().splitlines() == [f"line {n:02d}" for n in range(13)]
    finally:
        handler.close()


def test_close_writes_what_is_left() -> None:
    stream = CountingStream()
    handler = BatchedLineHandler(stream, interval=60)
    log = _logger(handler, "batching.close")
    log.info("last words")
    handler.close()
    assert stream.getvalue() == "last words\n"


def test_the_text_format_matches_the_standard_formatter_across_seconds() -> None:
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    ours, standard = TextFormatter(fmt), logging.Formatter(fmt)
    start = time.time()
    for offset in (0.0, 0.001, 0.999, 1.0, 1.5, 61.25, 3600.0):
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello %s", ("a",), None)
        record.created = start + offset
        record.msecs = (record.created - int(record.created)) * 1000
        assert ours.format(record) == standard.format(record)
