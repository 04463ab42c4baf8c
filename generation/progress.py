"""Progress of long work (generation, pretraining): a live bar on a terminal, sparse lines elsewhere.

On a terminal (stderr is a TTY) a tqdm bar shows the count, the rate (images/s, steps/s) and the
ETA. Anywhere else (a file, CI, SLURM, the ServerApp, whose output becomes `flwr log`) no bar is
drawn: work that lasts longer than ``GENFL_PROGRESS_INTERVAL`` seconds (60) prints one line that
often, e.g. ``generation: 400/1000 images (40%), class 3 40/100, 12.3 images/s, ETA 0:00:49``, and
one line when it ends; shorter work prints nothing. ``GENFL_PROGRESS=bar|lines|off`` overrides the
choice; `use_log` sends the lines to a logger instead of stderr (the ServerApp: Flower's log).
`phase` marks work that holds a run up (the augmented model's training when the round waits for it):
one line as it starts, one with its seconds as it ends.
"""

from __future__ import annotations

import io
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta

_SINK: Callable[[str], None] | None = None  # where lines go instead of stderr (`use_log`)
MODES = ("auto", "bar", "lines", "off")


def use_log(sink: Callable[[str], None] | None) -> None:
    """Send progress as lines to ``sink`` (never bars): for a process whose stderr is someone's log."""
    global _SINK
    _SINK = sink


def mode() -> str:
    """``bar``, ``lines`` or ``off``: ``GENFL_PROGRESS`` if set, else a bar only when stderr is a terminal."""
    chosen = os.environ.get("GENFL_PROGRESS", "auto").strip().lower() or "auto"
    if chosen not in MODES:
        chosen = "auto"
    if chosen == "auto":
        if _SINK is not None:
            return "lines"
        try:
            return "bar" if sys.stderr.isatty() else "lines"
        except (AttributeError, ValueError):  # a replaced or closed stderr
            return "lines"
    return chosen


def _columns() -> int:
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns
    except (AttributeError, ValueError, OSError, io.UnsupportedOperation):
        return 0


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get("GENFL_PROGRESS_INTERVAL", "60")))
    except ValueError:
        return 60.0


def duration(seconds: float | None) -> str:
    """``0:01:23``-style, whole seconds; ``?`` when unknown."""
    if seconds is None or math.isnan(seconds) or seconds < 0:
        return "?"
    return str(timedelta(seconds=round(seconds)))


@contextmanager
def phase(name: str, doing: str) -> Iterator[None]:
    """``name: doing`` as the work starts and ``name: done in 12.3s`` (or ``failed after``) as it ends,
    where progress lines go (`use_log`, else stderr); nothing with ``GENFL_PROGRESS=off``."""
    quiet = mode() == "off"
    if not quiet:
        _line(f"{name}: {doing}")
    started = time.monotonic()
    try:
        yield
    except BaseException:
        if not quiet:
            _line(f"{name}: failed after {time.monotonic() - started:.1f}s")
        raise
    if not quiet:
        _line(f"{name}: done in {time.monotonic() - started:.1f}s")


def _line(text: str) -> None:
    if _SINK is not None:
        _SINK(text)
    else:
        print(text, file=sys.stderr, flush=True)


class Progress:
    """``total`` units of work named ``desc``; ``update(n)`` as they are done, ``close()`` at the end.

    ``inner`` adds a second bar for a part of the work (``start_part``), e.g. one class of a plan:
    the overall bar and the part's bar, each with its own rate and ETA.
    """

    def __init__(self, total: int, desc: str, unit: str, *, enabled: bool = True, inner: str | None = None):
        self.total, self.desc, self.unit, self.inner = int(total), desc, unit, inner
        self.mode = mode() if enabled and total > 0 else "off"
        self.done = 0
        self.part: tuple[str, int, int] | None = None  # (name, done, total)
        self.postfix = ""
        self.started = self._last_line = time.monotonic()
        self._lines = 0
        self._bar = self._part_bar = None
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self._tqdm = tqdm
            # A pseudo-terminal without a size (0 columns) would get empty bars: give it a width.
            self._width = {} if _columns() else {"ncols": 100, "nrows": 24}
            self._bar = tqdm(total=self.total, desc=desc, unit=unit, unit_scale=False, dynamic_ncols=not self._width,
                             file=sys.stderr, position=0, leave=True, smoothing=0.1, **self._width)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start_part(self, name: str, total: int) -> None:
        """A new part (e.g. ``class 3``) of ``total`` units begins."""
        self.part = (name, 0, int(total))
        if self._bar is not None and self.inner is not None:
            if self._part_bar is None:
                self._part_bar = self._tqdm(total=int(total), desc=f"  {name}", unit=self.unit,
                                            dynamic_ncols=not self._width, file=sys.stderr, position=1, leave=False,
                                            smoothing=0.1, **self._width)
            else:
                self._part_bar.set_description(f"  {name}", refresh=False)
                self._part_bar.reset(total=int(total))

    def set_postfix(self, text: str) -> None:
        self.postfix = text
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.part is not None:
            name, done, total = self.part
            self.part = (name, done + n, total)
        if self._bar is not None:
            if self._part_bar is not None:
                self._part_bar.update(n)
            self._bar.update(n)
        elif self.mode == "lines":
            now = time.monotonic()
            if now - self._last_line >= _interval():
                self._last_line = now
                self._emit(self.line())

    def rate(self) -> float | None:
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 and self.done else None

    def line(self) -> str:
        """What the bar says, as one line of text."""
        rate = self.rate()
        eta = (self.total - self.done) / rate if rate else None
        share = f" ({self.done / self.total:.0%})" if self.total else ""
        parts = [f"{self.desc}: {self.done}/{self.total} {self.unit}s{share}"]
        if self.part is not None and self.inner is not None:
            parts.append(f"{self.part[0]} {self.part[1]}/{self.part[2]}")
        parts.append(f"{rate:.2f} {self.unit}s/s" if rate else f"? {self.unit}s/s")
        parts.append(f"elapsed {duration(time.monotonic() - self.started)}")
        if self.done < self.total:
            parts.append(f"ETA {duration(eta)}")
        if self.postfix:
            parts.append(self.postfix)
        return ", ".join(parts)

    def close(self) -> None:
        if self._part_bar is not None:
            self._part_bar.close()
            self._part_bar = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.mode == "lines" and self._lines:  # a long job that reported along the way reports its end
            self._emit(self.line())
        self.mode = "off"

    def _emit(self, text: str) -> None:
        self._lines += 1
        _line(text)
