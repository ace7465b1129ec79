"""components.progress: the one progress printer (stages print to stdout; `mesa data synth` to stderr with time)."""
from __future__ import annotations

import io

from components.progress import progress_printer


def test_progress_lines_show_the_count_and_the_extras(capsys):
    show = progress_printer("latents")
    show(3, 10, 0.123456, "shard-1")
    show(10, 10)
    assert capsys.readouterr().out == "[latents] 3/10 0.1235 shard-1\n[latents] 10/10\n"


def test_progress_lines_can_go_elsewhere_with_the_elapsed_time():
    stream = io.StringIO()
    progress_printer("synth", stream=stream, elapsed=True)(1, 4, "s2l2a")
    assert stream.getvalue() == "[synth] 1/4 s2l2a (0 s)\n"
