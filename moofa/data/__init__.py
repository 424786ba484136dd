"""Data: embedded datasets (digits, synthetic), reference transforms, samplers and the provider
of train / validation / test loaders and BN-calibration batches (docs/design.md#protocols)."""
from moofa.data.datasets import check_image_folder, ensure_dataset, write_dataset
from moofa.data.provider import (
                                 IMAGENETTE_IMAGENET_IDS,
                                 DataProvider,
                                 ResolutionDataset,
                                 use_cuda,
)
from moofa.data.samplers import (
                                 SUB_SEED,
                                 VALID_SEED,
                                 DistributedSubsetSampler,
                                 ElasticResolutionBatchSampler,
                                 calibration_indices,
                                 candidate_sizes,
                                 draw_resolution,
                                 resolution_seed,
                                 split_train_valid,
)
from moofa.data.transforms import (
                                 IMAGENET_MEAN,
                                 IMAGENET_STD,
                                 test_transform,
                                 train_transform,
)

__all__ = ["DataProvider", "ResolutionDataset", "ensure_dataset", "write_dataset", "check_image_folder",
           "IMAGENETTE_IMAGENET_IDS", "use_cuda", "SUB_SEED", "VALID_SEED",
           "DistributedSubsetSampler",
           "ElasticResolutionBatchSampler", "calibration_indices", "candidate_sizes", "draw_resolution",
           "resolution_seed", "split_train_valid", "IMAGENET_MEAN", "IMAGENET_STD", "test_transform",
           "train_transform"]
