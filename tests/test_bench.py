"""The benchmark: its refusal, with the reason, where it cannot time anything, rows that do not
fit the GPU, the roofline drawing, and (GPU) the FP8 rows' extra contenders."""

import pytest
import torch

from flash_mla_backend import bench


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_without_gpu_it_says_so_and_exits_2(capsys):
    assert bench.main([]) == 2
    assert "no CUDA GPU is visible" in capsys.readouterr().err


def test_a_row_out_of_gpu_memory_is_reported_and_the_run_goes_on(monkeypatch, capsys, tmp_path):
    # Everything that would touch a GPU stands in; the second row runs out of memory.
    calls = []

    def bench_config(kernel, kv_cache, config, peers, fp8_peers=()):
        calls.append(config)
        if len(calls) == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 24.36 GiB")
        b, s_q, s_k, h_q, varlen, causal = config
        return bench.Result(kernel, kv_cache, b, s_q, s_k, h_q, varlen, causal, 10.0, 1.0, 1.0, [10.0], {})

    monkeypatch.setattr(bench, "check_device", lambda: None)
    monkeypatch.setattr(bench, "measure_ceilings", lambda: {"copy_tbps": 1.0, "read_tbps": 1.0, "matmul_tflops": 1.0})
    monkeypatch.setattr(bench, "bench_config", bench_config)
    monkeypatch.setattr(bench._plan, "_device_properties", lambda device: {})
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "stand-in GPU")
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    out_json = tmp_path / "bench.json"
    assert bench.main(["--kernels", "sm90", "--kv-cache", "bf16", "--rows", "0,3,8", "--json", str(out_json)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| sm90")]
    assert calls == [bench.CONFIGS[0], bench.CONFIGS[3], bench.CONFIGS[8]]
    assert lines[1] == "| sm90 | bf16 | 128 | 1 | 32768 | 128 | T | F | skipped: out of GPU memory |"
    assert "skipped" not in lines[0] + lines[2] and len(lines) == 3
    import json
    assert [r["s_k"] for r in json.loads(out_json.read_text())["results"]] == [4096, 8192]


def test_roofline_is_drawn(tmp_path):
    pytest.importorskip("matplotlib", reason="--plot needs matplotlib, not installed here")
    peer = bench.PeerResult(us=120.0, ratio=1.2, rel_diff=1e-3, us_samples=[119.0, 121.0])
    results = [
        bench.Result("sm90", "bf16", 128, 1, 8192, 16, True, False, 100.0, 104.0, 3443.0, [99.0, 101.0],
                     {"flash_mla": peer}),
        bench.Result("sm90", "bf16", 128, 2, 8192, 128, True, True, 1300.0, 462.0, 1010.0, [1290.0, 1310.0], {}),
    ]
    path = tmp_path / "roofline.png"
    bench.plot_roofline(path, results, {"read_tbps": 4.2, "matmul_tflops": 780.0}, ["flash_mla"])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.gpu
def test_fp8_rows_time_ours_on_the_16_bit_cache_and_the_fp8_peers():
    import types

    import flash_mla_backend as fmb

    # A stand-in for an FP8 peer (which would quantise the 16-bit inputs itself): this package on
    # the 16-bit inputs, so its output must equal ours_bf16's exactly.
    peer = types.ModuleType("stand_in_fp8_peer")
    peer.get_mla_metadata, peer.flash_mla_with_kvcache = fmb.get_mla_metadata, fmb.flash_mla_with_kvcache
    r = bench.bench_config("auto", "fp8", (4, 1, 300, 16, False, False), [], [peer])
    assert list(r.peers) == [bench.OURS_BF16, "stand_in_fp8_peer"]
    ours_bf16, stand_in = r.peers[bench.OURS_BF16], r.peers["stand_in_fp8_peer"]
    assert stand_in.rel_diff == ours_bf16.rel_diff
    # Ours FP8 against ours 16-bit: e4m3's 3-bit mantissa (relative step 2^-4) on N(0, 1) keys
    # moves the output by a few percent, never by nothing.
    assert 1e-3 < ours_bf16.rel_diff < 0.1
    assert r.us > 0 and ours_bf16.us > 0 and len(ours_bf16.us_samples) == 2
