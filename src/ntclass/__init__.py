"""ntclass: neurotransmitter classification of synapses in EM volumes."""

__version__ = "0.1.0"
