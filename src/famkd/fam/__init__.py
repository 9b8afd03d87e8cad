"""The Frequency Attention Module (FAM) of FAM-KD (docs/method.md).

    masks     the fixed high-pass masks M and the FFT index layout of frequencies
    spectral  the fast path: the whole module as one filter on the half spectrum, with its gradients
    module    `FrequencyAttention` and the literal definition `direct_global_branch`
    inspect   what a FAM learned: its filter's magnitude spectrum, radially averaged power spectra

The names below are the package's public interface; tuning constants such as
`famkd.fam.spectral.TRANSPOSE_SLAB_NUMEL` live (and are read, or patched) in their own module.
"""

from famkd.fam.inspect import fam_heads, filter_spectrum, frequency_radius, radial_power_spectrum
from famkd.fam.masks import (
    HIGHPASS_FILTERS,
    butterworth_highpass_mask,
    gaussian_highpass_mask,
    highpass_mask,
    ideal_highpass_mask,
    negated_indices,
    normalized_radius,
    radial_highpass_mask,
    self_mirrored_columns,
    signed_frequencies,
)
from famkd.fam.module import FrequencyAttention, direct_global_branch
from famkd.fam.spectral import SpectralFilter, effective_filter, frequency_major, transposed

__all__ = [
    "HIGHPASS_FILTERS",
    "FrequencyAttention",
    "SpectralFilter",
    "butterworth_highpass_mask",
    "direct_global_branch",
    "effective_filter",
    "fam_heads",
    "filter_spectrum",
    "frequency_major",
    "frequency_radius",
    "gaussian_highpass_mask",
    "highpass_mask",
    "ideal_highpass_mask",
    "negated_indices",
    "normalized_radius",
    "radial_highpass_mask",
    "radial_power_spectrum",
    "self_mirrored_columns",
    "signed_frequencies",
    "transposed",
]
