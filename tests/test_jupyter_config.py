"""The project's Jupyter settings (configs/jupyter/): kernels started by `make lab` and by papermill get
CurveZMQ-encrypted channels, so ipykernel >= 7.3 does not warn "Kernel is running over TCP without encryption"."""
import json
import subprocess
import sys
import textwrap

import nbformat
import pytest
from traitlets.config.loader import PyFileConfigLoader

from safety_neurons.config import PROJECT_ROOT

CONFIG_DIR = PROJECT_ROOT / "configs" / "jupyter"
WARNING = "Kernel is running over TCP without encryption"


def load_jupyter_config():
    return PyFileConfigLoader("jupyter_server_config.py", path=str(CONFIG_DIR)).load_config()


def test_the_config_asks_for_encrypted_kernel_channels():
    zmq = pytest.importorskip("zmq")
    from jupyter_client import KernelManager

    config = load_jupyter_config()
    expected = "auto" if zmq.has("curve") else "disabled"
    assert KernelManager(config=config).transport_encryption == expected
    if zmq.has("curve"):
        assert config.MappingKernelManager.transport_encryption == "auto"


def test_a_papermill_kernel_with_the_config_neither_warns_nor_needs_more(tmp_path):
    """One kernel start (a few seconds): no transport warning, and tqdm.auto draws a widget (ipywidgets
    installed), not the "IProgress not found" warning."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell("from tqdm.auto import tqdm\nfor _ in tqdm(range(2)):\n    pass\nprint('ran')")]
    nbformat.write(nb, tmp_path / "in.ipynb")
    script = textwrap.dedent(f"""
        import papermill as pm
        from traitlets.config.loader import PyFileConfigLoader
        config = PyFileConfigLoader("jupyter_server_config.py", path={str(CONFIG_DIR)!r}).load_config()
        pm.execute_notebook({str(tmp_path / 'in.ipynb')!r}, {str(tmp_path / 'out.ipynb')!r}, kernel_name="python3",
                            progress_bar=False, cwd={str(tmp_path)!r}, config=config)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert WARNING not in done.stderr and WARNING not in done.stdout
    outputs = [o for c in json.loads((tmp_path / "out.ipynb").read_text())["cells"] for o in c["outputs"]]
    assert not [o for o in outputs if o.get("name") == "stderr"], outputs  # no IProgress / TqdmWarning
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)
    assert any("".join(o.get("text", "")) == "ran\n" for o in outputs)
