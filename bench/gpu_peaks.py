"""Peak dense bf16 tensor throughput of common GPUs (vendor data sheets, without sparsity), for MFU.

The device name torch reports is matched against these names, longest first ("H100 PCIe" before "H100");
a GPU not listed gets no MFU unless --peak-tflops gives its peak.
"""
from __future__ import annotations

PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,  # SXM
    "H800": 989.0,
    "GH200": 989.0,
    "A100": 312.0,
    "A800": 312.0,
    "L40S": 362.0,
    "L40": 181.0,
    "L4": 121.0,
    "A10": 125.0,  # not the A10G, whose peak differs: pass --peak-tflops for it
    "RTX 4090": 165.0,
    "RTX 6000 Ada": 364.0,
    "RTX A6000": 155.0,
}
NOT_MATCHED = ("A10G",)  # names that contain a listed one but are other chips


def peak_tflops(device_name: str | None) -> float | None:
    """The listed peak of `device_name` (torch.cuda.get_device_name), or None when it is not listed."""
    if not device_name or any(other in device_name for other in NOT_MATCHED):
        return None
    for name in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):
        if name in device_name:
            return PEAK_BF16_TFLOPS[name]
    return None
