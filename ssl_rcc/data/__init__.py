"""Archive ingestion: scanning, reading (NIfTI, DICOM series), preprocessing and the cache."""

from .cache import CachedArchive, build_cache
from .preprocess import PreprocessConfig, preprocess_volume
from .scan import ArchiveItem, load_item, scan_archive
from .volume import Volume, read_dicom_series, read_mask, read_nifti

__all__ = ["CachedArchive", "build_cache", "PreprocessConfig", "preprocess_volume", "ArchiveItem", "load_item", "read_mask",
           "scan_archive", "Volume", "read_dicom_series", "read_nifti"]
