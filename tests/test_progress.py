"""Progress reaches a pipe as plain lines (Prefect's logs under `trust run`), never one \\r line."""

import io

from trust.utils.progress import progress


def test_a_pipe_gets_plain_lines_at_each_tenth_and_at_the_end():
    out = io.StringIO()  # not a terminal: isatty() is False
    assert list(progress(range(20), total=20, desc="finetune (trust)", stream=out, every_s=1e9)) == list(range(20))
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines[0] == "finetune (trust): 0/20 started"
    assert [ln.split(":")[1].split()[0] for ln in lines[1:]] == [f"{i}/20" for i in range(2, 21, 2)]
    assert lines[-1].startswith("finetune (trust): 20/20 (100%)")


def test_a_resumed_run_counts_from_where_it_resumed():
    out = io.StringIO()
    list(progress(range(15, 20), total=20, initial=15, desc="d", stream=out, every_s=1e9, every_frac=0.5))
    assert out.getvalue().splitlines()[0] == "d: 15/20 started" and "d: 20/20 (100%)" in out.getvalue()


def test_a_consumer_that_stops_early_is_reported_where_it_stopped():
    out = io.StringIO()
    for i in progress(range(100), total=100, desc="d", stream=out, every_s=1e9):
        if i == 41:  # the 42nd step reached the bar
            break
    assert out.getvalue().splitlines()[-1].startswith("d: stopped at 42/100")
