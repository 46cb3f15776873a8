"""TotalSegmentator class names (v2, 117 classes) and the groups ``build-totalseg --groups`` offers.

The groups are TotalSegmentator v2's own five parts (``class_map_5_parts`` in its ``map_to_binary.py``: the
five nnU-Net models that together segment all 117 classes), in their order, plus ``all`` (the 117 classes in
the order and with the values of TotalSegmentator's multi-label output). Class names are those of the v2
dataset's ``segmentations/<class>.nii.gz`` files; v1 (104 classes) named some differently (``heart_myocardium``
... instead of ``heart``), so for v1 pass ``--classes``.
"""
from __future__ import annotations

_VERTEBRAE = ["vertebrae_S1", "vertebrae_L5", "vertebrae_L4", "vertebrae_L3", "vertebrae_L2", "vertebrae_L1",
              *(f"vertebrae_T{i}" for i in range(12, 0, -1)), *(f"vertebrae_C{i}" for i in range(7, 0, -1))]
_RIBS = [*(f"rib_left_{i}" for i in range(1, 13)), *(f"rib_right_{i}" for i in range(1, 13))]

GROUPS: dict[str, tuple[str, ...]] = {
    "organs": (
        "spleen", "kidney_right", "kidney_left", "gallbladder", "liver", "stomach", "pancreas",
        "adrenal_gland_right", "adrenal_gland_left", "lung_upper_lobe_left", "lung_lower_lobe_left",
        "lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right", "esophagus", "trachea",
        "thyroid_gland", "small_bowel", "duodenum", "colon", "urinary_bladder", "prostate", "kidney_cyst_left",
        "kidney_cyst_right",
    ),
    "vertebrae": ("sacrum", *_VERTEBRAE),
    "cardiac": (
        "heart", "aorta", "pulmonary_vein", "brachiocephalic_trunk", "subclavian_artery_right",
        "subclavian_artery_left", "common_carotid_artery_right", "common_carotid_artery_left",
        "brachiocephalic_vein_left", "brachiocephalic_vein_right", "atrial_appendage_left", "superior_vena_cava",
        "inferior_vena_cava", "portal_vein_and_splenic_vein", "iliac_artery_left", "iliac_artery_right",
        "iliac_vena_left", "iliac_vena_right",
    ),
    "muscles": (
        "humerus_left", "humerus_right", "scapula_left", "scapula_right", "clavicula_left", "clavicula_right",
        "femur_left", "femur_right", "hip_left", "hip_right", "spinal_cord", "gluteus_maximus_left",
        "gluteus_maximus_right", "gluteus_medius_left", "gluteus_medius_right", "gluteus_minimus_left",
        "gluteus_minimus_right", "autochthon_left", "autochthon_right", "iliopsoas_left", "iliopsoas_right",
        "brain", "skull",
    ),
    "ribs": (*_RIBS, "sternum", "costal_cartilages"),
}

# TotalSegmentator v2's multi-label values 1..117: organs 1-24, then sacrum and the vertebrae, then the cardiac
# part, then the muscles part, then ribs, sternum and costal cartilages.
GROUPS["all"] = (
    *GROUPS["organs"], *GROUPS["vertebrae"], *GROUPS["cardiac"], *GROUPS["muscles"], *GROUPS["ribs"],
)

assert len(GROUPS["all"]) == len(set(GROUPS["all"])) == 117
