"""servelab.progress: a bar for people watching, nothing in executed notebooks or the website."""

import jupyter_client
import pytest

from servelab import progress

LOOP = """\
import time
from servelab.progress import progress
for i in progress(range(4), desc="sweep"):
    time.sleep(0.7)  # the bar appears after DELAY_S = 1 s
    if i == 2:
        break  # a sweep that stops early, as rate_sweep.sweep does
print("done")
"""


def test_the_switch_forces_bars_on_and_off(monkeypatch):
    monkeypatch.setenv(progress.ENV_SWITCH, "1")
    assert progress.watched()
    monkeypatch.setenv(progress.ENV_SWITCH, "off")
    assert not progress.watched()


def test_pytest_is_not_watched(monkeypatch):
    monkeypatch.delenv(progress.ENV_SWITCH, raising=False)
    assert progress.kernel_accepts_input() is None
    assert not progress.watched()


@pytest.mark.parametrize("switch", ["0", "1"])
def test_every_item_is_yielded_and_a_break_is_clean(monkeypatch, capsys, switch):
    monkeypatch.setenv(progress.ENV_SWITCH, switch)
    monkeypatch.setattr(progress, "DELAY_S", 0.0)
    assert list(progress.progress([3, 1, 2], desc="points")) == [3, 1, 2]
    seen = []
    for item in progress.progress(iter(range(10)), desc="points"):
        seen.append(item)
        if item == 2:
            break
    assert seen == [0, 1, 2]
    if switch == "1":  # the terminal bar clears its line when it closes (leave=False)
        assert capsys.readouterr().err.endswith("\r")


def kernel_messages(client: jupyter_client.BlockingKernelClient, code: str, *, allow_stdin: bool) -> list[dict]:
    """The iopub messages one execute request produced, until the kernel is idle again."""
    msg_id = client.execute(code, allow_stdin=allow_stdin)
    messages = []
    while True:
        msg = client.get_iopub_msg(timeout=60)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return messages
        messages.append(msg)


def test_batch_runs_get_no_bar_and_interactive_ones_a_bar_that_closes(monkeypatch):
    monkeypatch.delenv(progress.ENV_SWITCH, raising=False)
    manager, client = jupyter_client.manager.start_new_kernel(kernel_name="python3")
    try:
        # nbclient (the website build, nbgrader) and nbval send allow_stdin=False
        batch = kernel_messages(client, LOOP, allow_stdin=False)
        # JupyterLab sends allow_stdin=True
        interactive = kernel_messages(client, LOOP, allow_stdin=True)
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)

    outputs = [m for m in batch if m["msg_type"] in ("stream", "display_data", "update_display_data", "error")]
    assert [(m["msg_type"], m["content"].get("text")) for m in outputs] == [("stream", "done\n")]
    displayed = [m for m in interactive if m["msg_type"] == "display_data"]
    assert displayed and "application/vnd.jupyter.widget-view+json" in displayed[0]["content"]["data"]
    assert any(m["msg_type"] == "comm_close" for m in interactive), "the bar should close when its loop ends"
    assert not any(m["msg_type"] == "error" for m in interactive)
