"""The benchmark's parts that run without a GPU: its refusal, with the reason, where it cannot
time anything, and the roofline drawing."""

import pytest
import torch

from flash_mla_backend import bench


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_without_gpu_it_says_so_and_exits_2(capsys):
    assert bench.main([]) == 2
    assert "no CUDA GPU is visible" in capsys.readouterr().err


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
