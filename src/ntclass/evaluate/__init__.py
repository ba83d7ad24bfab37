"""Evaluation: synapse- and neuron-level metrics and the report (`metrics`), neuron calls
and the signed edge list out of core (`outofcore`, `circuit`), calibration and plots."""
