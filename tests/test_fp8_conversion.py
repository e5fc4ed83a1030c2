"""The kernels' e4m3 -> bf16/fp16 conversion (csrc/common/fp8_e4m3.h), compiled for the host and
checked bit for bit against torch on all 256 byte values; on a GPU also both device paths (the
machine code of this GPU, which on sm_89 and later uses the hardware conversion, and compute_80
PTX, the arithmetic older machine code runs). The conversion is exact, so the FP8 paths differ
from the 16-bit ones only in the scales they fold in."""

import os
import shutil
import subprocess

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUDA_HOME = os.environ.get("CUDA_HOME", "/usr/local/cuda")

PROGRAM = r"""
#include "common/fp8_e4m3.h"
#include <cstdio>
using namespace flash_mla_backend;
int main() {
  // Each byte value in the low half of a pair, with its complement in the high half.
  for (uint32_t b = 0; b < 256; ++b) {
    const uint32_t two = b | ((255u - b) << 8);
    printf("%08x %08x\n", convert_e4m3x2<__nv_bfloat16>(two), convert_e4m3x2<__half>(two));
  }
  // Sixteen consecutive bytes through the 16-wide conversion, to pin the output order.
  const uint32_t in[4] = {0x33221100u, 0x77665544u, 0xBBAA9988u, 0xFFEEDDCCu};
  uint32_t out[8];
  convert_e4m3x16<__nv_bfloat16>(in, out);
  for (uint32_t word : out) printf("%08x\n", word);
}
"""


# Each byte value in the low half of a pair, with its complement in the high half, converted on
# the device by one thread each.
DEVICE_PROGRAM = r"""
#include "common/fp8_e4m3.h"
#include <cstdio>
using namespace flash_mla_backend;
__global__ void convert_all(uint32_t* out) {
  const uint32_t b = threadIdx.x, two = b | ((255u - b) << 8);
  out[2 * b] = convert_e4m3x2<__nv_bfloat16>(two);
  out[2 * b + 1] = convert_e4m3x2<__half>(two);
}
int main() {
  uint32_t* out = nullptr;
  uint32_t host[512];
  if (cudaMalloc(&out, sizeof(host)) != cudaSuccess) return 1;
  convert_all<<<1, 256>>>(out);
  if (cudaMemcpy(host, out, sizeof(host), cudaMemcpyDeviceToHost) != cudaSuccess) return 2;
  for (int b = 0; b < 256; ++b) printf("%08x %08x\n", host[2 * b], host[2 * b + 1]);
}
"""


def _host_compiler():
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        pytest.skip("no host C++ compiler (g++) on the PATH")
    if not os.path.exists(os.path.join(CUDA_HOME, "include", "cuda_bf16.h")):
        pytest.skip(f"no CUDA headers under CUDA_HOME={CUDA_HOME}")
    return compiler


@pytest.fixture(scope="module")
def conversion_output(tmp_path_factory):
    compiler = _host_compiler()
    work = tmp_path_factory.mktemp("fp8")
    source, binary = work / "convert.cpp", work / "convert"
    source.write_text(PROGRAM)
    subprocess.run(
        [compiler, "-std=c++17", "-O1", f"-I{ROOT}/csrc", f"-I{CUDA_HOME}/include", str(source), "-o", str(binary)],
        check=True,
    )
    return subprocess.run([str(binary)], check=True, capture_output=True, text=True).stdout.split("\n")


def _bits16(values: torch.Tensor) -> list:
    return values.view(torch.int16).to(torch.int32).bitwise_and(0xFFFF).tolist()


def _expected_pair_bits(dtype):
    low = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(torch.float8_e4m3fn).to(dtype)
    high = (255 - torch.arange(256, dtype=torch.int32)).to(torch.uint8).view(torch.float8_e4m3fn).to(dtype)
    return [(h << 16) | l for l, h in zip(_bits16(low), _bits16(high))]


def _canonical_nan(bits: int, dtype) -> int:
    # NaN payloads may differ; any NaN is right for e4m3's NaN encodings.
    halves = [(bits >> shift) & 0xFFFF for shift in (0, 16)]
    values = torch.tensor(halves, dtype=torch.int32).to(torch.int16).view(dtype).float()
    return tuple("nan" if v != v else h for v, h in zip(values.tolist(), halves))


def _assert_pairs_exact(lines, column, dtype):
    got = [int(line.split()[column], 16) for line in lines[:256]]
    want = _expected_pair_bits(dtype)
    mismatches = [
        (b, hex(g), hex(w))
        for b, (g, w) in enumerate(zip(got, want))
        if _canonical_nan(g, dtype) != _canonical_nan(w, dtype)
    ]
    assert not mismatches, f"{dtype}: (byte, got, want) {mismatches[:8]}"


@pytest.mark.parametrize("column, dtype", [(0, torch.bfloat16), (1, torch.float16)])
def test_every_e4m3_byte_converts_exactly(conversion_output, column, dtype):
    _assert_pairs_exact(conversion_output, column, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("code", ["native", "compute_80"])
def test_every_e4m3_byte_converts_exactly_on_the_device(tmp_path, code):
    nvcc = os.path.join(CUDA_HOME, "bin", "nvcc")
    if not os.path.exists(nvcc):
        pytest.skip(f"no nvcc under CUDA_HOME={CUDA_HOME}")
    source, binary = tmp_path / "convert.cu", tmp_path / "convert"
    source.write_text(DEVICE_PROGRAM)
    target = ["-arch=native"] if code == "native" else ["-gencode", "arch=compute_80,code=compute_80"]
    subprocess.run([nvcc, "-std=c++17", *target, f"-I{ROOT}/csrc", str(source), "-o", str(binary)], check=True)
    lines = subprocess.run([str(binary)], check=True, capture_output=True, text=True).stdout.split("\n")
    for column, dtype in [(0, torch.bfloat16), (1, torch.float16)]:
        _assert_pairs_exact(lines, column, dtype)


def test_sixteen_wide_conversion_keeps_order(conversion_output):
    got = [int(line, 16) for line in conversion_output[256:264]]
    values = torch.arange(0, 256, 17, dtype=torch.int32).to(torch.uint8).view(torch.float8_e4m3fn)
    bits = _bits16(values.to(torch.bfloat16))
    want = [(bits[2 * i + 1] << 16) | bits[2 * i] for i in range(8)]
    assert [_canonical_nan(g, torch.bfloat16) for g in got] == [_canonical_nan(w, torch.bfloat16) for w in want]
