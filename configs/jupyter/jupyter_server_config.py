"""Jupyter settings of this project: `make lab` puts this folder first on JUPYTER_CONFIG_PATH.

Kernels run on this machine and talk to the server over local TCP sockets. Since ipykernel 7.3 a
kernel warns at every start that this traffic is not encrypted ("Kernel is running over TCP without
encryption ..."). The fix it names: the kernel manager provisions CurveZMQ keys for each kernel
(jupyter_client >= 8.10 `transport_encryption`; "auto": when the kernelspec declares support, as
ipykernel >= 7.3 does), so the channels are encrypted and the warning goes away. The runner's
papermill kernels get the same setting (runner.py passes it to papermill as `config`).
"""
import zmq

c = get_config()  # noqa: F821 (provided by Jupyter when it loads this file)

if zmq.has("curve"):  # pyzmq's wheels bundle libzmq with CURVE; a build without it keeps plain TCP
    c.MappingKernelManager.transport_encryption = "auto"  # jupyter_server: every kernel it starts
    c.KernelManager.transport_encryption = "auto"  # each kernel's own manager
