"""Synthetic whole-body bone scans with lesion masks (MODEL.md §5).

``generate_patient(seed, index)`` returns a :class:`SyntheticPatient`: paired anterior/posterior
``(1024, 256)`` uint16 Poisson count images (row 0 = head; posterior mirrored left-right as
acquired), lesion, benign-mimic and instance masks, the true shoulder row and 256-row thorax
window of the phantom, and a JSON-ready dict of every sampled parameter. Modules:

``body``      build, pose, soft-tissue thickness (§5.1)
``skeleton``  parametric 2-D bone atlas (§5.2)
``hotspots``  metastases, merged clusters, benign mimics (§5.7, §5.8)
``optics``    attenuation, depth-dependent blur, counts (§5.4–5.6)
``labels``    ground-truth masks and calibration ROIs (§5.9)
``scan``      the patient: sampling order, views, parameters
``split``     patient-level train/val/test split (MODEL.md §1)
"""

from msanet_core.synth.scan import (
    SyntheticPatient,
    SyntheticView,
    generate_patient,
    patient_id_for,
)
from msanet_core.synth.split import assign_splits

__all__ = [
    "SyntheticPatient",
    "SyntheticView",
    "assign_splits",
    "generate_patient",
    "patient_id_for",
]
