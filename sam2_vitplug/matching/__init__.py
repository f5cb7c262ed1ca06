"""Few-shot reference segmentation (training-free, "No Time to Train" style; docs/architecture.md section 4).

References (COCO json) -> :func:`build_bank` -> :class:`MemoryBank` (safetensors); target
images -> a :class:`ProposalSource` (``sam2`` or ``ground_truth``) -> :class:`FewShotPredictor`
(scoring, NMS, soft merging) -> COCO results -> :func:`evaluate`.
"""

from .bank import MemoryBank, bank_dtype_warning, build_bank, load_bank, save_bank
from .config import load_config
from .encoder import HFMatcherEncoder, MatcherEncoder, load_matcher
from .evaluation import evaluate, format_summary
from .pipeline import FewShotPredictor
from .adaptive import AdaptiveConfig
from .decoder_engine import FastMaskDecoder
from .proposals import GroundTruthProposals, ProposalSource, Proposals, SAM2Proposals, make_proposal_source
from .references import Reference, SampleReport, sample_references, sam2_box_prompter
from .runner import ImageEntry, dist_info, images_from_coco, images_from_folder, run_images
from .scoring import assign_labels, class_nms, class_similarity, soft_merge

__all__ = [
    "AdaptiveConfig", "FastMaskDecoder", "FewShotPredictor", "GroundTruthProposals", "HFMatcherEncoder", "ImageEntry", "MatcherEncoder", "MemoryBank",
    "ProposalSource", "Proposals", "Reference", "SAM2Proposals", "SampleReport", "assign_labels", "bank_dtype_warning", "build_bank",
    "class_nms", "class_similarity", "dist_info", "evaluate", "format_summary", "images_from_coco",
    "images_from_folder", "load_bank", "load_config", "load_matcher", "make_proposal_source", "run_images",
    "sam2_box_prompter", "sample_references", "save_bank", "soft_merge",
]
