"""Remote devices for benchmarks: this machine, a board over ssh, a phone over adb.

>>> device = parse_device_url("ssh://pi@raspberrypi")
>>> run_lce_benchmark(device, "model.tflite", binary="/home/pi/lce_benchmark_model")
"""

from bnn_export.devices.adb import AdbDevice
from bnn_export.devices.base import Device
from bnn_export.devices.errors import REASONS, DeviceError
from bnn_export.devices.lce_benchmark import (
    build_lce_benchmark_argv,
    parse_lce_benchmark_output,
    run_lce_benchmark,
)
from bnn_export.devices.local import LocalDevice
from bnn_export.devices.process import CompletedRun
from bnn_export.devices.remote_worker import run_remote_worker
from bnn_export.devices.ssh import SshDevice
from bnn_export.devices.url import VALID_FORMS, parse_device_url

__all__ = [
    "REASONS",
    "VALID_FORMS",
    "AdbDevice",
    "CompletedRun",
    "Device",
    "DeviceError",
    "LocalDevice",
    "SshDevice",
    "build_lce_benchmark_argv",
    "parse_device_url",
    "parse_lce_benchmark_output",
    "run_lce_benchmark",
    "run_remote_worker",
]
