#!/usr/bin/env python3
"""vLLM's offline engine end to end on one GPU: a tiny DeepSeek model served by two attention
backends, their greedy tokens and logprobs compared.

Run by `scripts/gpu_check.sh e2e` on the GPU host, against the vLLM 0.26.0 engine that
../shared/tools/vllm-gpu-e2e installs into /tmp/site (PYTHONPATH). The model is written here: two
dense layers, 16 heads, DeepSeek's MLA sizes (kv_lora_rank 512, rope 64), vocabulary 4096; with
E2E_MTP, a DeepSeek-V3-style checkpoint with one multi-token-prediction layer, which vLLM serves as
the `deepseek_mtp` draft of speculative decoding (verify steps of 1 + E2E_MTP query tokens).

Phases (E2E_PHASES, default "dummy,rand"):
  dummy  vLLM's dummy weights: attention barely moves the tokens; proves the pipeline runs.
  rand   seeded N(0, 0.02) weights and unit norms: attention dominates, so the comparison is
         sensitive to the attention kernels.
Each (phase, backend) runs in a process of its own, the engine core in it. The first backend of
E2E_BACKENDS is the baseline; `NAME@builtin` runs vLLM's own NAME with our plugin disabled.
Verdict per phase: PASS when the tokens match, or when every prompt's first divergence is a
near-tie (both top tokens within E2E_TOL nats in both backends) and, on identical context, the
logprobs of the tokens both report agree within E2E_TOL.

Environment: E2E_BACKENDS (default TRITON_MLA,FLASHMLA), E2E_PHASES, E2E_EAGER (1: eager, the
default; 0: vLLM's compilation and CUDA graphs), E2E_KV_DTYPE (auto | fp8), E2E_TOL (nats, default
0.05: about 3 bf16 ulps of a logit of magnitude 2-4), E2E_MTP (speculative tokens per step,
default 0: off), E2E_TOTAL_S (wall budget, default 420), E2E_WORKDIR (default /tmp/v26e2e),
E2E_GPU_UTIL (default 0.3).
"""

import json
import os
import random
import subprocess
import sys
import time
import traceback

T_START = time.time()
BACKENDS = tuple(os.environ.get("E2E_BACKENDS", "TRITON_MLA,FLASHMLA").split(","))
PHASES = tuple(p for p in os.environ.get("E2E_PHASES", "dummy,rand").split(",") if p)
TOL = float(os.environ.get("E2E_TOL", "0.05"))
MTP_TOKENS = int(os.environ.get("E2E_MTP", "0"))
PROMPT_LENS = (5, 37, 64, 130)
MAX_TOKENS = 16
TOP_LOGPROBS = 8
PROMPT_SEED = 1234
WEIGHT_SEED = 0
SPEC_COUNTERS = ("vllm:spec_decode_num_drafts", "vllm:spec_decode_num_draft_tokens",
                 "vllm:spec_decode_num_accepted_tokens")

NUM_LAYERS = 2
BASE_CONFIG = {
    "architectures": ["DeepseekV2ForCausalLM"],
    "model_type": "deepseek_v2",
    "vocab_size": 4096,
    "hidden_size": 1024,
    "intermediate_size": 2048,
    "moe_intermediate_size": 256,
    "num_hidden_layers": NUM_LAYERS,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
    "hidden_act": "silu",
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-06,
    "q_lora_rank": None,
    "kv_lora_rank": 512,
    "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64,
    "v_head_dim": 128,
    # Dense everywhere (the engine bundle has no fused-MoE library): no layer index reaches
    # first_k_dense_replace. transformers and vLLM still want an int expert count.
    "n_routed_experts": 8,
    "n_shared_experts": 1,
    "num_experts_per_tok": 2,
    "first_k_dense_replace": NUM_LAYERS,
    "moe_layer_freq": 1,
    "n_group": 1,
    "topk_group": 1,
    "topk_method": "greedy",
    "norm_topk_prob": False,
    "routed_scaling_factor": 1.0,
    "rope_theta": 10000.0,
    "rope_scaling": None,
    "attention_bias": False,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "use_cache": True,
    "torch_dtype": "bfloat16",
}


def model_config(mtp: bool) -> dict:
    if not mtp:
        return dict(BASE_CONFIG)
    # vLLM turns a deepseek_v3 checkpoint with MTP layers into its deepseek_mtp draft; the
    # architecture name keeps the target on the same model runner as without MTP. The MTP layer
    # (index NUM_LAYERS) must stay dense too.
    return dict(BASE_CONFIG, model_type="deepseek_v3", num_nextn_predict_layers=1,
                first_k_dense_replace=NUM_LAYERS + 1)


def weight_shapes(config: dict) -> dict:
    """Name -> shape of every tensor of the checkpoint, in a fixed order."""
    hidden, vocab = config["hidden_size"], config["vocab_size"]
    heads, rank = config["num_attention_heads"], config["kv_lora_rank"]
    nope, rope, v_dim = config["qk_nope_head_dim"], config["qk_rope_head_dim"], config["v_head_dim"]
    inter = config["intermediate_size"]

    def decoder_layer(prefix):
        return {
            prefix + "input_layernorm.weight": (hidden,),
            prefix + "post_attention_layernorm.weight": (hidden,),
            prefix + "self_attn.q_proj.weight": (heads * (nope + rope), hidden),
            prefix + "self_attn.kv_a_proj_with_mqa.weight": (rank + rope, hidden),
            prefix + "self_attn.kv_a_layernorm.weight": (rank,),
            prefix + "self_attn.kv_b_proj.weight": (heads * (nope + v_dim), rank),
            prefix + "self_attn.o_proj.weight": (hidden, heads * v_dim),
            prefix + "mlp.gate_proj.weight": (inter, hidden),
            prefix + "mlp.up_proj.weight": (inter, hidden),
            prefix + "mlp.down_proj.weight": (hidden, inter),
        }

    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,),
              "lm_head.weight": (vocab, hidden)}
    for i in range(config["num_hidden_layers"]):
        shapes.update(decoder_layer(f"model.layers.{i}."))
    for i in range(config.get("num_nextn_predict_layers", 0)):
        prefix = f"model.layers.{config['num_hidden_layers'] + i}."
        shapes.update({
            prefix + "enorm.weight": (hidden,),
            prefix + "hnorm.weight": (hidden,),
            prefix + "eh_proj.weight": (hidden, 2 * hidden),
            prefix + "shared_head.norm.weight": (hidden,),
            prefix + "shared_head.head.weight": (vocab, hidden),
            prefix + "embed_tokens.weight": (vocab, hidden),
        })
        shapes.update(decoder_layer(prefix))
    return shapes


def write_model(path: str, config: dict, weights: bool) -> None:
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    with open(os.path.join(path, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 1, "eos_token_id": 2, "do_sample": False}, f)
    checkpoint = os.path.join(path, "model.safetensors")
    if not weights:
        if os.path.exists(checkpoint):
            os.remove(checkpoint)
        return
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(WEIGHT_SEED)
    tensors = {name: (torch.ones(shape) if len(shape) == 1 else torch.randn(shape, generator=generator) * 0.02)
               .to(torch.bfloat16) for name, shape in weight_shapes(config).items()}
    save_file(tensors, checkpoint, metadata={"format": "pt"})


def prompts(vocab_size: int):
    rng = random.Random(PROMPT_SEED)
    return [[rng.randrange(3, vocab_size) for _ in range(n)] for n in PROMPT_LENS]


# ----------------------------------------------------------------------------- engine process


def run_worker(backend: str, model_dir: str, load_format: str, out_path: str) -> int:
    name = backend.split("@")[0]  # NAME@builtin: the parent disabled our plugin for this process
    result = {"backend": backend, "ok": False}
    t0 = time.time()
    try:
        import torch
        import vllm
        from vllm import LLM, SamplingParams

        result["vllm_version"] = vllm.__version__
        speculative = ({"speculative_config": {"method": "deepseek_mtp", "num_speculative_tokens": MTP_TOKENS}}
                       if MTP_TOKENS else {})
        llm = LLM(
            model=model_dir,
            load_format=load_format,
            skip_tokenizer_init=True,
            enforce_eager=os.environ.get("E2E_EAGER", "1") == "1",
            kv_cache_dtype=os.environ.get("E2E_KV_DTYPE", "auto"),
            attention_config={"backend": name},
            block_size=64 if name == "FLASHMLA" else None,
            gpu_memory_utilization=float(os.environ.get("E2E_GPU_UTIL", "0.3")),
            max_model_len=1024,
            max_num_batched_tokens=2048,
            max_num_seqs=16,
            dtype="bfloat16",
            seed=0,
            disable_log_stats=not MTP_TOKENS,  # the speculative-decoding counters need the stats
            **speculative,
        )
        result["t_init_s"] = round(time.time() - t0, 1)
        try:  # which attention implementations serve; informational (a spawned engine core may refuse it)
            result["impls"] = sorted(set(llm.apply_model(
                lambda model: sorted({type(m.impl).__name__ for m in model.modules() if getattr(m, "impl", None)}))[0]))
        except Exception as error:  # noqa: BLE001
            result["impls"] = [f"unknown ({type(error).__name__}: {error})"[:200]]
        params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True, detokenize=False,
                                logprobs=TOP_LOGPROBS)
        t1 = time.time()
        outputs = llm.generate([{"prompt_token_ids": p} for p in prompts(BASE_CONFIG["vocab_size"])], params,
                               use_tqdm=False)
        torch.cuda.synchronize()
        result["t_generate_s"] = round(time.time() - t1, 2)
        result["tokens"] = [list(map(int, o.outputs[0].token_ids)) for o in outputs]
        # Per prompt, per step: {token: logprob} for the chosen token and the top TOP_LOGPROBS.
        result["logprobs"] = [[{int(k): float(v.logprob) for k, v in step.items()} for step in o.outputs[0].logprobs]
                              for o in outputs]
        if MTP_TOKENS:
            result["spec"] = {m.name: m.value for m in llm.get_metrics() if m.name in SPEC_COUNTERS}
        result["ok"] = True
    except BaseException as error:  # noqa: BLE001 - the parent reports any failure with its traceback
        result["error"] = f"{type(error).__name__}: {error}"
        result["traceback"] = traceback.format_exc()[-4000:]
    result["t_total_s"] = round(time.time() - t0, 1)
    with open(out_path, "w") as f:
        json.dump(result, f)
    return 0 if result["ok"] else 1


# ----------------------------------------------------------------------------- comparison


def judge(a: dict, b: dict, tol: float = TOL):
    """(verdict, summary, divergence lines) for the greedy outputs of backends a and b."""
    identical = sum(x == y for ta, tb in zip(a["tokens"], b["tokens"]) for x, y in zip(ta, tb))
    total = sum(max(len(ta), len(tb)) for ta, tb in zip(a["tokens"], b["tokens"]))
    max_delta, shared_steps, lines, problems = 0.0, 0, [], []

    def delta(step_a, step_b):
        return max((abs(step_a[k] - step_b[k]) for k in step_a.keys() & step_b.keys()), default=0.0)

    for i, (ta, tb) in enumerate(zip(a["tokens"], b["tokens"])):
        la, lb = a["logprobs"][i], b["logprobs"][i]
        j = 0
        while j < min(len(ta), len(tb)) and ta[j] == tb[j]:
            max_delta = max(max_delta, delta(la[j], lb[j]))
            shared_steps += 1
            j += 1
        if len(ta) != len(tb) and j == min(len(ta), len(tb)):
            problems.append(f"prompt {i}: {len(ta)} tokens against {len(tb)}")
            continue
        if j == len(ta):
            continue
        x, y = ta[j], tb[j]
        gap_a = la[j][x] - la[j][y] if y in la[j] else None  # how far a preferred its token over b's
        gap_b = lb[j][y] - lb[j][x] if x in lb[j] else None
        top_delta = abs(la[j][x] - lb[j][y])
        max_delta = max(max_delta, delta(la[j], lb[j]))
        gaps = [g for g in (gap_a, gap_b) if g is not None]
        near_tie = top_delta <= tol and gaps and all(g <= tol for g in gaps)
        shown = ", ".join("n/a" if g is None else f"{g:.4f}" for g in (gap_a, gap_b))
        line = (f"prompt {i} (length {PROMPT_LENS[i]}) diverges at step {j}: {a['backend']} {x}, {b['backend']} "
                f"{y}; gaps {shown}; top-1 logprob difference {top_delta:.4f}: "
                + ("near-tie" if near_tie else "NOT a near-tie"))
        lines.append(line)
        if not near_tie:
            problems.append(line)
    if max_delta > tol:
        problems.append(f"logprobs differ by {max_delta:.4f} > {tol} on identical context")
    summary = f"{identical}/{total} tokens identical; {shared_steps} shared steps, max |dlogprob| {max_delta:.4f} (tol {tol})"
    if problems:
        return "FAIL", summary + "; " + " | ".join(problems), lines
    return "PASS", ("exact: " if identical == total else "near-ties only: ") + summary, lines


# ----------------------------------------------------------------------------- parent


def log(message: str) -> None:
    print(f"[e2e {time.time() - T_START:6.1f}s] {message}", flush=True)


def spawn_worker(args, timeout, log_path, extra_env):
    env = dict(os.environ, **extra_env)
    for key, value in (("VLLM_ENABLE_V1_MULTIPROCESSING", "0"), ("VLLM_NO_USAGE_STATS", "1"),
                       ("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1")):
        env.setdefault(key, value)
    with open(log_path, "w") as log_file:
        try:
            return subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", *args], stdout=log_file,
                                  stderr=subprocess.STDOUT, env=env, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            return "timeout"


def run_backend(phase, backend, model_dir, work, budget):
    left = budget - (time.time() - T_START)
    if left < 45:
        log(f"SKIP {phase}/{backend}: {left:.0f} s of the budget left")
        return None
    out = os.path.join(work, f"res_{phase}_{backend}.json")
    log_path = os.path.join(work, f"log_{phase}_{backend}.txt")
    if os.path.exists(out):
        os.remove(out)
    extra_env = {"FLASH_MLA_BACKEND_DISABLE_VLLM": "1"} if backend.endswith("@builtin") else {}
    t0 = time.time()
    rc = spawn_worker([backend, model_dir, "dummy" if phase == "dummy" else "safetensors", out],
                      min(left - 15, 300), log_path, extra_env)
    result = None
    if os.path.exists(out):
        with open(out) as f:
            result = json.load(f)
        result["logprobs"] = [[{int(k): v for k, v in step.items()} for step in p] for p in result.get("logprobs", [])]
    if not (result and result["ok"]):
        log(f"FAIL {phase}/{backend}: rc {rc} after {time.time() - t0:.0f} s: "
            f"{result.get('error') if result else 'no result'}; log {log_path}")
        if result:
            print(result.get("traceback", ""), flush=True)
        else:
            with open(log_path, errors="replace") as f:
                print("".join(f.readlines()[-25:]), flush=True)
        return None
    log(f"{phase}/{backend}: OK after {time.time() - t0:.0f} s (init {result['t_init_s']} s, generate "
        f"{result['t_generate_s']} s) impls={result['impls']}" + (f" spec={result['spec']}" if MTP_TOKENS else "")
        + f" log={log_path}")
    for k, tokens in enumerate(result["tokens"]):
        print(f"    {phase}/{backend} prompt {k} (length {PROMPT_LENS[k]}): {tokens}", flush=True)
    return result


def main() -> int:
    budget = float(os.environ.get("E2E_TOTAL_S", "420"))
    work = os.environ.get("E2E_WORKDIR", "/tmp/v26e2e")
    os.makedirs(work, exist_ok=True)
    os.environ.setdefault("TRITON_CACHE_DIR", os.path.join(work, "triton_cache"))
    os.environ.setdefault("VLLM_CACHE_ROOT", os.path.join(work, "vllm_cache"))
    import torch
    import vllm

    log(f"python {sys.version.split()[0]}, torch {torch.__version__}, vllm {vllm.__version__}, "
        f"{torch.cuda.get_device_name(0)}; backends {BACKENDS}, phases {PHASES}, eager "
        f"{os.environ.get('E2E_EAGER', '1')}, kv cache {os.environ.get('E2E_KV_DTYPE', 'auto')}, "
        f"speculative tokens {MTP_TOKENS}, tol {TOL}")
    verdicts = []
    for phase in PHASES:
        model_dir = os.path.join(work, f"tiny_deepseek_{phase}" + ("_mtp" if MTP_TOKENS else ""))
        write_model(model_dir, model_config(bool(MTP_TOKENS)), weights=phase == "rand")
        baseline, candidate = (run_backend(phase, backend, model_dir, work, budget) for backend in BACKENDS[:2])
        if baseline is None or candidate is None:
            verdicts.append((phase, "FAIL", "a backend produced no tokens"))
            continue
        verdict, summary, lines = judge(baseline, candidate)
        for line in lines:
            print("      " + line, flush=True)
        if MTP_TOKENS and not all(r["spec"].get("vllm:spec_decode_num_draft_tokens", 0) > 0
                                  for r in (baseline, candidate)):
            verdict, summary = "FAIL", summary + "; a backend ran no speculative draft tokens"
        verdicts.append((phase, verdict, summary))
    print("=" * 72, flush=True)
    for phase, verdict, summary in verdicts:
        print(f"RESULT {phase}: {verdict} ({summary})", flush=True)
    overall = "PASS" if verdicts and all(v == "PASS" for _, v, _ in verdicts) else "FAIL"
    print(f"E2E OVERALL: {overall} (total {time.time() - T_START:.0f} s)", flush=True)
    return 0 if overall == "PASS" else 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        sys.exit(run_worker(*sys.argv[2:6]))
    sys.exit(main())
