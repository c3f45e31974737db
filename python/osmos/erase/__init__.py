"""Concept erasure: SPM one-dimensional adapters (osmos.erase.spm) and UCE / RECE closed-form edits (osmos.erase.closed_form)."""
