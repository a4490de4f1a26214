"""The paper's method, on plain arguments (models, token ids, neuron lists), never a run config:
neuron sets, change scores, dynamic patching, statistics, the safeguard, interpretation tools and
alignment training."""
