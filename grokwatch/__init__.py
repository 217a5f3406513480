"""grokwatch: a live grokking monitor for Mixture-of-Experts pretraining runs."""

__version__ = "0.1.0"

# Bump when any stored value would change meaning (method.md choices, storage layout).
METRIC_DEFINITION = "gw1:pathway=softmax-mean,tau-prefix;distance=char-lev;consistency=max-norm"
