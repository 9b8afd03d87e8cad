"""The FAM filter spectrum shown by `famkd inspect` against a direct full-grid computation."""

from __future__ import annotations

import torch

from famkd.fam import FrequencyAttention
from famkd.report.fam_inspect import filter_spectrum


def test_filter_spectrum_is_mean_abs_of_the_symmetrised_masked_filter():
    torch.manual_seed(0)
    for size in (7, 8):
        fam = FrequencyAttention(3, 2, size, hpf="gaussian", cutoff=0.4).double()
        kernel = torch.view_as_complex(fam.global_filter.detach())
        masked = fam.mask * kernel
        negated = torch.roll(torch.flip(masked, (-2, -1)), (1, 1), (-2, -1))  # index k -> -k mod S
        reference = torch.fft.fftshift((0.5 * (masked + negated.conj())).abs().mean(dim=(0, 1)))
        assert torch.allclose(filter_spectrum(fam), reference, atol=1e-14, rtol=0)
