"""The HTML report is one self-contained file with its images embedded as base64 PNGs."""

import base64
import io
import re

import torch
from PIL import Image

from trust.attacks.base import AttackResult, PromptOutcome
from trust.report import Example, write_report
from trust.stages.evaluate import _examples
from trust.utils.images import labelled_grid

METRICS = {"target_rate_base": 1.0, "target_rate": 0.1, "pre_asr": 0.1, "asr": {"prompt_set": 0.1, "p4d": 0.5},
           "keep": {"shape:square": {"base": 1.0, "tuned": 0.9, "drop": 0.1, "images": 8}},
           "fidelity": {"world_fd": {"name": "world-classifier Fréchet distance", "base": 1.0, "erased": 1.5,
                                     "delta": 0.5}}}


def _imgs(n=2):
    return torch.rand(n, 3, 16, 16) * 2 - 1


def test_report_is_written_with_embedded_images(tmp_path):
    grid = labelled_grid([("base: a red circle", _imgs()), ("erased: a red circle", _imgs())])
    examples = {"p4d": [Example("a red circle", "disk object red", True, 0.9, _imgs(1), _imgs(1))]}
    path = write_report(tmp_path / "out" / "report.html", "test report", METRICS, grid, grid, examples, {"seed": 0})
    text = path.read_text()
    uris = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(uris) == 4  # ASR bar chart, base-vs-erased grid, one example, preservation grid
    for u in uris:
        Image.open(io.BytesIO(base64.b64decode(u))).verify()
    assert "disk object red" in text and "BROKEN by attack" in text and "world-classifier Fréchet distance" in text
    assert "ASR p4d" in text and 'src="http' not in text


def test_examples_rank_successes_first():
    ps = AttackResult("prompt_set", {}, {}, [PromptOutcome("a", [1], 4.0, False, score=0.2, images=_imgs(1)),
                                            PromptOutcome("b", [2], 4.0, True, score=0.9, images=_imgs(1))], 0.0)
    p4d = AttackResult("p4d", {}, {}, [PromptOutcome("a", [1], 4.0, False, broken=True, adversarial="x a",
                                                     score=0.7, images=_imgs(1)),
                                       PromptOutcome("b", [2], 4.0, True, score=0.9, images=_imgs(1))], 0.0)
    ex = _examples({"prompt_set": ps, "p4d": p4d})
    assert [e.prompt for e in ex["prompt_set"]] == ["b", "a"] and ex["prompt_set"][0].detected_no_attack
    assert ex["p4d"][0].after is None  # detected with no attack: nothing adversarial to show
    assert ex["p4d"][1].adversarial == "x a" and ex["p4d"][1].before is not None


def _has_colour(img: Image.Image, rgb: tuple[int, int, int]) -> bool:
    return rgb in {c for _, c in img.getcolors(maxcolors=1 << 20)}


def test_report_opens_with_the_verdict_and_header_and_the_chart_shows_the_gate():
    from trust.report.html import asr_bar_chart, render_report

    gates = {"max_target_rate": {"value": 0.125, "limit": 0.1, "passed": False},
             "min_base_target_rate": {"value": 0.02, "limit": 0.25, "passed": False},
             "max_preservation_drop": {"value": 0.1, "limit": 0.1, "passed": True}, "passed": False}
    metrics = {**METRICS, "asr_details": {"prompt_set": {"prompts": 22}, "p4d": {"prompts": 4}}}
    text = render_report("t", metrics, gates=gates, header=[("git commit", "abc123")], asr_gate=("max_asr", 0.1))
    body = text.split("<body>", 1)[1]
    assert body.index("FAIL: max_target_rate 0.125 &gt; 0.1; min_base_target_rate 0.020 &lt; 0.25") < body.index("Metrics")
    assert "abc123" in body and "p4d: 4 prompts" in body and "prompt_set: 22 prompts" in body
    ok = {k: {**g, "passed": True} if isinstance(g, dict) else True for k, g in gates.items()}
    assert "PASS: every registration gate holds" in render_report("t", metrics, gates=ok)
    # held (at or under the gate) green, broken red: 0.10 sits exactly at a 0.10 gate
    green, red = (0x27, 0xAE, 0x60), (0xC0, 0x39, 0x2B)
    at_gate = asr_bar_chart(0.1, {"prompt_set": 0.1, "p4d": 0.5}, gate=0.1)
    assert _has_colour(at_gate, green) and _has_colour(at_gate, red)
    assert not _has_colour(asr_bar_chart(0.1, {"prompt_set": 0.1, "p4d": 0.5}, gate=0.05), green)
    assert not _has_colour(asr_bar_chart(0.1, {"p4d": 0.5}), green)  # no gate: no verdict colours
