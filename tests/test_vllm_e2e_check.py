"""The end-to-end check's own logic (scripts/vllm_e2e.py), which runs only on the GPU host: its
verdict on two backends' greedy outputs, and the tiny checkpoint it writes for MTP."""

import importlib.util
import random
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "vllm_e2e.py"
spec = importlib.util.spec_from_file_location("vllm_e2e", SCRIPT)
vllm_e2e = importlib.util.module_from_spec(spec)
spec.loader.exec_module(vllm_e2e)

TOL = 0.05


def _outputs(backend, rng):
    """Greedy outputs of one backend: per prompt, tokens and per-step logprobs, top token clearly first."""
    tokens, logprobs = [], []
    for _ in vllm_e2e.PROMPT_LENS:
        steps = [{t: -rng.uniform(2, 6) for t in rng.sample(range(100, 4096), 8)} for _ in range(4)]
        chosen = [rng.randrange(3, 100) for _ in steps]
        for step, token in zip(steps, chosen):
            step[token] = -0.1
        tokens.append(chosen)
        logprobs.append(steps)
    return {"backend": backend, "tokens": tokens, "logprobs": logprobs}


@pytest.fixture
def pair(case_seed):
    rng = random.Random(case_seed)
    a = _outputs("A", rng)
    b = {"backend": "B", "tokens": [list(t) for t in a["tokens"]],
         "logprobs": [[{k: v + rng.uniform(-TOL / 2, TOL / 2) for k, v in s.items()} for s in p] for p in a["logprobs"]]}
    return a, b


def _diverge(a, b, prompt, step, gap):
    """b takes another token at (prompt, step), which a scored `gap` nats below its own choice."""
    other = 4095
    chosen = a["tokens"][prompt][step]
    a["logprobs"][prompt][step][other] = a["logprobs"][prompt][step][chosen] - gap
    b["logprobs"][prompt][step][other] = b["logprobs"][prompt][step][chosen] + gap / 2
    b["tokens"][prompt][step] = other


def test_identical_tokens_within_tolerance_pass(pair):
    verdict, summary, _ = vllm_e2e.judge(*pair, tol=TOL)
    assert verdict == "PASS" and summary.startswith("exact")


def test_logprobs_beyond_tolerance_on_identical_context_fail(pair):
    a, b = pair
    token = a["tokens"][1][2]
    b["logprobs"][1][2][token] = a["logprobs"][1][2][token] - 2 * TOL
    verdict, summary, _ = vllm_e2e.judge(a, b, tol=TOL)
    assert verdict == "FAIL" and "identical context" in summary


def test_a_near_tie_divergence_passes(pair):
    a, b = pair
    _diverge(a, b, prompt=2, step=1, gap=TOL / 4)
    verdict, summary, lines = vllm_e2e.judge(a, b, tol=TOL)
    assert verdict == "PASS" and summary.startswith("near-ties only")
    assert len(lines) == 1 and "near-tie" in lines[0]


def test_a_clear_divergence_fails(pair):
    a, b = pair
    _diverge(a, b, prompt=0, step=3, gap=1.0)
    verdict, _, lines = vllm_e2e.judge(a, b, tol=TOL)
    assert verdict == "FAIL" and "NOT a near-tie" in lines[0]


def test_mtp_checkpoint_has_a_dense_mtp_layer():
    config = vllm_e2e.model_config(mtp=True)
    shapes = vllm_e2e.weight_shapes(config)
    mtp_layer = config["num_hidden_layers"]
    assert config["model_type"] == "deepseek_v3" and config["num_nextn_predict_layers"] == 1
    # vLLM builds a layer as MoE from index first_k_dense_replace on; its bundle has no MoE library.
    assert config["first_k_dense_replace"] > mtp_layer
    hidden = config["hidden_size"]
    assert shapes[f"model.layers.{mtp_layer}.eh_proj.weight"] == (hidden, 2 * hidden)
    for name in ("enorm", "hnorm", "shared_head.norm", "self_attn.kv_a_proj_with_mqa", "mlp.down_proj"):
        assert f"model.layers.{mtp_layer}.{name}.weight" in shapes
    assert not any(n.startswith(f"model.layers.{mtp_layer}.") for n in vllm_e2e.weight_shapes(vllm_e2e.model_config(False)))
