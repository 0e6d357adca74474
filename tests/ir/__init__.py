"""Tests of the IR layer: types, attributes, the generic printer and parser, the verifier."""
