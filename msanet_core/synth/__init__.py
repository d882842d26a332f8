"""Synthetic whole-body bone scans (MODEL.md §5)."""

from msanet_core.synth.scan import (
    SyntheticPatient,
    SyntheticView,
    generate_patient,
    patient_id_for,
)

__all__ = ["SyntheticPatient", "SyntheticView", "generate_patient", "patient_id_for"]
