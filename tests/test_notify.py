"""The failure notification (flows/notify.py): off by default; with `notify.block` set, the failed
state's message reaches the block, here Prefect's real CustomWebhookNotificationBlock posting to a
server on 127.0.0.1; a block that cannot be loaded is a warning, never an exception."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import SimpleNamespace

import pytest
import yaml

from flows.notify import notify_failure


@pytest.fixture
def project(tmp_path, shipped_params, root):
    raw = yaml.safe_load((root / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    return tmp_path


def _run(project, block=None):
    if block is not None:
        raw = yaml.safe_load((project / "params.yaml").read_text())
        raw["notify"] = {"block": block}
        (project / "params.yaml").write_text(yaml.safe_dump(raw))
    return SimpleNamespace(name="unlearn-circle-20261203T000000Z",
                           parameters={"params_path": "params.yaml", "root": str(project)})


FLOW = SimpleNamespace(name="unlearn")
STATE = SimpleNamespace(message="Flow run encountered an exception: StageFailed: stage 'register' failed (exit 3): "
                                "failed gate(s): max_asr (value 0.500, limit 0.0); production unchanged")


def test_off_by_default_sends_nothing(project):
    sent = []
    assert not notify_failure(FLOW, _run(project), STATE, loader=lambda slug: sent.append(slug))
    assert sent == []


def test_the_failed_gate_reaches_a_real_webhook_block(project):
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    got = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/hook"
    block = CustomWebhookNotificationBlock(name="t", url=url, allow_private_urls=True,
                                           json_data={"text": "{{subject}}|{{body}}"})
    loaded = []
    try:
        ok = notify_failure(FLOW, _run(project, "custom-webhook/trust-alerts"), STATE,
                            loader=lambda slug: loaded.append(slug) or block)
    finally:
        server.shutdown()
    assert ok and loaded == ["custom-webhook/trust-alerts"]
    subject, body = got[0]["text"].split("|", 1)
    assert subject == "trust: unlearn run unlearn-circle-20261203T000000Z FAILED"
    assert "max_asr (value 0.500, limit 0.0)" in body


def test_a_block_that_cannot_be_loaded_is_a_warning(project):
    warnings = []

    def missing(slug):
        raise ValueError(f"Unable to find block document named {slug}")

    assert not notify_failure(FLOW, _run(project, "slack-webhook/nope"), STATE, loader=missing, log=warnings.append)
    assert "sending to slack-webhook/nope failed" in warnings[0] and "Unable to find" in warnings[0]


def test_a_malformed_block_name_is_refused_at_params_check(project):
    from trust.config import ParamsError, load_params

    _run(project, "Slack Webhook")
    with pytest.raises(ParamsError, match="notify.block"):
        load_params(project / "params.yaml", root=project, check_files=False)
