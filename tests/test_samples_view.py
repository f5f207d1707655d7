"""The report's samples (analysis.samples): what each arm writes before and after its collapse step, with
the extreme-ratio tokens marked."""

import json

import pandas as pd

from analysis.samples import EXTREME, arm_samples_html, before_after, token_html


def _row(step, response="7", logr=0.0):
    return {"kind": "train", "step": step, "prompt": "Q:3+4=", "response": response, "reward": 1.0,
            "tokens": list(response), "log_ratio": [logr] * len(response), "is_weight": [1.0] * len(response),
            "clipped": [0] * len(response), "masked": [0] * len(response)}


def test_before_and_after_the_collapse_step():
    rows = [_row(s) for s in (1, 3, 5, 7)] + [{"kind": "eval", "step": 4, "prompt": "p", "response": "r"}]
    assert [t for t, _ in before_after(rows, 6.0)] == [
        "before the collapse (step 3)", "at the collapse (step 5, the global step of collapse step 6)"]
    assert [t for t, _ in before_after(rows, None)] == ["first step (1)", "last step (7)"]
    assert before_after([], 3.0) == []


def test_extreme_ratios_clipped_and_masked_tokens_are_marked():
    row = {"tokens": ["1", "0", "0"], "log_ratio": [EXTREME + 0.1, -EXTREME - 0.1, 0.01],
           "is_weight": [2.0, 0.5, 1.0], "clipped": [0, 1, 0], "masked": [0, 0, 1]}
    text = token_html(row)
    assert 'class="tok-hi"' in text and 'class="tok-lo tok-clip"' in text and 'class="tok-mask"' in text
    assert "IS weight 2" in text


def test_an_arm_block_per_arm_from_its_run_dir(tmp_path):
    d = tmp_path / "seed0"
    d.mkdir()
    (d / "samples.jsonl").write_text("".join(json.dumps(_row(s, "1000000#0", 2.0)) + "\n" for s in (1, 2)))
    per_run = pd.DataFrame([{"arm": "minirl_no_is", "seed": 0, "collapse_step": 2.0, "run_dir": str(d)},
                            {"arm": "minirl", "seed": 0, "collapse_step": float("nan"),
                             "run_dir": str(tmp_path)}])
    page = arm_samples_html(per_run)
    assert page.count("<details>") == 1 and "minirl_no_is (seed 0)" in page
    assert "before the collapse (step 1)" in page and "at the collapse (step 2, " in page
    assert 'class="tok-hi"' in page
